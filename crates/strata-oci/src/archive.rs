//! Image tars. Docker archives (`docker save` tars): read in their OCI
//! form (an image layout inside the tar) or their `manifest.json` form, and
//! written with both, so `docker load`, skopeo and Strata all read them.
//! OCI archives (skopeo's `oci-archive:`): an image layout in a tar, read
//! and written as such.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image as oci;
use serde::{Deserialize, Serialize};
use strata_content::ContentStore;
use strata_core::{Compression, Descriptor, Digest, Labels, media};
use strata_leases::ProgressTracker;

use crate::error::{OciError, Result};
use crate::image::{BlobReader, Image, MAX_DOCUMENT_SIZE, parse_document, read_bounded};
use crate::layout::{Files, LayoutSource, blob_path, index_entry, layout_header, write_atomic};
use crate::source::{IMAGE_NAME_ANNOTATION, Roots, Source};

/// The most members an archive may have.
const MAX_MEMBERS: usize = 1 << 20;
/// The most symbolic links followed to reach one member.
const MAX_LINK_HOPS: usize = 8;

/// One entry of `manifest.json`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

#[derive(Clone, Debug)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

/// The members of a tar, by normalized path.
pub(crate) struct TarFiles {
    file: PathBuf,
    members: HashMap<String, Member>,
}

/// `name` as a path inside the archive: `.` and empty parts dropped; an
/// absolute path or a `..` that climbs out is refused.
fn normalize(archive: &str, name: &str) -> Result<String> {
    if name.starts_with('/') {
        return Err(OciError::invalid(
            archive,
            format!("member {name:?} has an absolute path, outside the archive's root"),
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(OciError::invalid(
                        archive,
                        format!("member {name:?} lies outside the archive's root"),
                    ));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

impl TarFiles {
    /// Reads the member table of the tar `file` (headers only; the data is
    /// skipped by seeking).
    pub(crate) fn scan(file: &Path) -> Result<TarFiles> {
        let object = format!("archive {}", file.display());
        let f = fs::File::open(file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OciError::not_found(&object, "does not exist"),
            _ => OciError::io("open", &object, e),
        })?;
        let mut archive = tar::Archive::new(f);
        let mut members = HashMap::new();
        let entries = archive
            .entries_with_seek()
            .map_err(|e| OciError::invalid(&object, format!("is not a tar: {e}")))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| OciError::invalid(&object, format!("is not a valid tar: {e}")))?;
            if members.len() >= MAX_MEMBERS {
                return Err(OciError::invalid(
                    &object,
                    format!("has over {MAX_MEMBERS} members"),
                ));
            }
            let raw = entry.path_bytes();
            let name = std::str::from_utf8(&raw)
                .map_err(|_| OciError::invalid(&object, "has a member whose name is not UTF-8"))?
                .to_owned();
            let path = normalize(&object, &name)?;
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    OciError::invalid(&object, format!("link {name:?} has no target"))
                })?;
                let target = std::str::from_utf8(&target).map_err(|_| {
                    OciError::invalid(&object, format!("link {name:?} has a non-UTF-8 target"))
                })?;
                let joined = if kind.is_symlink() {
                    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                    format!("{dir}/{target}")
                } else {
                    target.to_owned()
                };
                Member::Link(normalize(&object, &joined)?)
            } else {
                continue;
            };
            members.insert(path, member);
        }
        Ok(TarFiles {
            file: file.to_owned(),
            members,
        })
    }

    fn has(&self, path: &str) -> bool {
        self.members.contains_key(path)
    }
}

impl Files for TarFiles {
    fn describe(&self) -> String {
        format!("archive {}", self.file.display())
    }

    fn open(&self, path: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let object = self.describe();
        let mut at = normalize(&object, path)?;
        for _ in 0..=MAX_LINK_HOPS {
            match self.members.get(&at) {
                None => {
                    return Err(OciError::not_found(
                        &object,
                        format!("has no member {path}"),
                    ));
                }
                Some(Member::Link(next)) => at = next.clone(),
                Some(&Member::File { offset, size }) => {
                    let mut f =
                        fs::File::open(&self.file).map_err(|e| OciError::io("open", &object, e))?;
                    f.seek(SeekFrom::Start(offset))
                        .map_err(|e| OciError::io("seek", &object, e))?;
                    return Ok((Box::new(f.take(size)), size));
                }
            }
        }
        Err(OciError::invalid(
            &object,
            format!("member {path} is behind more than {MAX_LINK_HOPS} links"),
        ))
    }
}

/// The source of a docker archive: its OCI layout when it has one, else
/// its `manifest.json`.
pub(crate) fn archive_source(file: &Path, name: Option<&str>) -> Result<Arc<dyn Source>> {
    let files = Arc::new(TarFiles::scan(file)?);
    if files.has("oci-layout") && files.has("index.json") {
        // Docker names the images of an OCI-form archive with full
        // references; the tag part picks one.
        let tag = name.map(|n| n.rsplit_once(':').map_or(n, |(_, t)| t).to_owned());
        return Ok(Arc::new(LayoutSource { files, tag }));
    }
    Ok(Arc::new(ManifestJsonSource {
        files,
        name: name.map(str::to_owned),
    }))
}

/// A docker archive read through its `manifest.json`: config and layers
/// are files named there, so their digests come from hashing them; the
/// image's OCI manifest is made here.
struct ManifestJsonSource {
    files: Arc<TarFiles>,
    name: Option<String>,
}

impl ManifestJsonSource {
    fn entry(&self) -> Result<ArchiveEntry> {
        let object = self.files.describe();
        let (r, _) = self.files.open("manifest.json").map_err(|e| match e {
            OciError::NotFound { .. } => OciError::invalid(
                &object,
                "has neither an OCI layout (oci-layout, index.json) nor a manifest.json",
            ),
            e => e,
        })?;
        let mut entries: Vec<ArchiveEntry> = parse_document(
            &format!("{object} manifest.json"),
            &read_bounded(&object, r)?,
        )?;
        let wanted = |e: &ArchiveEntry, n: &str| {
            e.repo_tags
                .iter()
                .any(|t| t == n || t.strip_suffix(":latest") == Some(n))
        };
        let count = entries.len();
        let pick = match &self.name {
            Some(n) => entries.iter().position(|e| wanted(e, n)).ok_or_else(|| {
                let names: Vec<&str> = entries
                    .iter()
                    .flat_map(|e| &e.repo_tags)
                    .map(String::as_str)
                    .collect();
                OciError::not_found(
                    &object,
                    format!("has no image {n:?} (has {})", names.join(", ")),
                )
            })?,
            None if count == 1 => 0,
            None if count == 0 => return Err(OciError::not_found(&object, "lists no images")),
            None => {
                return Err(OciError::invalid(
                    &object,
                    format!("is ambiguous: {count} images; name one (docker-archive:FILE:NAME)"),
                ));
            }
        };
        Ok(entries.swap_remove(pick))
    }

    /// Stores member `path` (its digest computed) and describes it; whether
    /// the store is new to it.
    fn ingest_member(
        &self,
        store: &ContentStore,
        path: &str,
        media_type: Option<&str>,
    ) -> Result<(Descriptor, bool)> {
        let object = self.files.describe();
        let (mut reader, size) = self.files.open(path)?;
        if media_type.is_some_and(|m| m == media::OCI_CONFIG) && size > MAX_DOCUMENT_SIZE {
            return Err(OciError::invalid(
                format!("{object} {path}"),
                format!("is {size} bytes; documents over {MAX_DOCUMENT_SIZE} bytes are refused"),
            ));
        }
        // The first bytes say a layer's compression; they are read once and
        // put back in front of the rest.
        let mut head = Vec::with_capacity(4);
        (&mut reader)
            .take(4)
            .read_to_end(&mut head)
            .map_err(|e| OciError::io("read", format!("{object} {path}"), e))?;
        let media_type = media_type.map_or_else(
            || Compression::detect(&head).media_type().to_owned(),
            str::to_owned,
        );
        let reader = std::io::Cursor::new(head).chain(reader);
        let reference = format!("archive-{}-{path}", self.files.file.display());
        let ingested = store.ingest(&reference, reader, Some(size), None, &Labels::new())?;
        Ok((
            Descriptor::new(media_type, ingested.digest, ingested.size),
            !ingested.already_existed,
        ))
    }
}

#[async_trait::async_trait]
impl Source for ManifestJsonSource {
    fn name(&self) -> String {
        match &self.name {
            Some(n) => format!("{}:{n}", self.files.describe()),
            None => self.files.describe(),
        }
    }

    async fn roots(&self, store: &ContentStore) -> Result<Roots> {
        let entry = self.entry()?;
        let mut stored = 0;
        let object = self.files.describe();
        let (config, new) = self.ingest_member(store, &entry.config, Some(media::OCI_CONFIG))?;
        stored += usize::from(new);
        let mut layers = Vec::with_capacity(entry.layers.len());
        for path in &entry.layers {
            let (layer, new) = self.ingest_member(store, path, None)?;
            stored += usize::from(new);
            layers.push(oci::Descriptor::from(&layer));
        }
        let manifest = oci::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(oci::MediaType::ImageManifest)
            .config(oci::Descriptor::from(&config))
            .layers(layers)
            .build()
            .map_err(|e| OciError::invalid(&object, e.to_string()))?;
        let bytes = manifest
            .to_string()
            .map_err(|e| OciError::invalid(&object, e.to_string()))?;
        let digest = Digest::of_bytes(strata_core::Algorithm::Sha256, bytes.as_bytes());
        let ingested = store.ingest(
            &crate::source::ingest_ref(&digest),
            bytes.as_bytes(),
            Some(bytes.len() as u64),
            Some(&digest),
            &Labels::new(),
        )?;
        stored += usize::from(!ingested.already_existed);
        let mut desc = Descriptor::new(media::OCI_MANIFEST, ingested.digest, ingested.size);
        if let Some(name) = entry.repo_tags.first() {
            desc.annotations
                .insert(IMAGE_NAME_ANNOTATION.to_owned(), name.clone());
        }
        Ok(Roots {
            entries: vec![oci::Descriptor::from(&desc)],
            stored,
        })
    }

    async fn fetch(
        &self,
        _store: &ContentStore,
        desc: &Descriptor,
        _progress: &Arc<ProgressTracker>,
    ) -> Result<()> {
        // Everything this source names was stored by `roots`.
        Err(OciError::not_found(
            self.files.describe(),
            format!("has no blob {}", desc.digest),
        ))
    }
}

/// The name docker gives an image in `RepoTags`: with a tag.
fn repo_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The source of an OCI archive (an OCI layout in a tar, as skopeo,
/// podman and buildah write it), with the image `reference` picked in it
/// (its `org.opencontainers.image.ref.name`).
pub(crate) fn oci_archive_source(file: &Path, reference: Option<&str>) -> Result<Arc<dyn Source>> {
    let files = Arc::new(TarFiles::scan(file)?);
    if !(files.has("oci-layout") && files.has("index.json")) {
        return Err(OciError::invalid(
            files.describe(),
            "has no OCI layout (oci-layout, index.json): an oci-archive is an OCI image layout in a tar (a docker save tar is read as docker-archive:)",
        ));
    }
    Ok(Arc::new(LayoutSource {
        files,
        tag: reference.map(str::to_owned),
    }))
}

/// Writes `image` as a docker archive at `file` (replaced atomically):
/// an OCI layout and a `manifest.json` over the same blobs.
pub fn write_archive(store: &ContentStore, image: &Image, file: &Path, name: &str) -> Result<()> {
    let tag = repo_tag(name);
    write_tar(store, image, file, &tag, Some(&tag))
}

/// Writes `image` as an OCI archive at `file` (replaced atomically): an
/// OCI layout in a tar, the image under `reference`, as `skopeo copy ...
/// oci-archive:FILE:REF` writes it.
pub fn write_oci_archive(
    store: &ContentStore,
    image: &Image,
    file: &Path,
    reference: &str,
) -> Result<()> {
    write_tar(store, image, file, reference, None)
}

/// An OCI layout in a tar at `file`, the image under `ref_name`; with a
/// docker name, also the `manifest.json` of a docker archive.
fn write_tar(
    store: &ContentStore,
    image: &Image,
    file: &Path,
    ref_name: &str,
    docker_name: Option<&str>,
) -> Result<()> {
    let entry = index_entry(store, image, ref_name, docker_name)?;
    let index = oci::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(oci::MediaType::ImageIndex)
        .manifests(vec![entry])
        .build()
        .map_err(|e| OciError::invalid("index.json", e.to_string()))?;
    let manifest_json = docker_name
        .map(|tag| {
            serde_json::to_vec(&[ArchiveEntry {
                config: blob_path(&image.config.digest),
                repo_tags: vec![tag.to_owned()],
                layers: image.layers.iter().map(|l| blob_path(&l.digest)).collect(),
            }])
            .map_err(|e| OciError::invalid("manifest.json", e.to_string()))
        })
        .transpose()?;
    let index_json = index
        .to_string()
        .map_err(|e| OciError::invalid("index.json", e.to_string()))?;
    let object = format!("archive {}", file.display());
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| OciError::io("create", dir.display(), e))?;
    }
    write_atomic(file, |f| {
        let mut tar = tar::Builder::new(f);
        let io = |e| OciError::io("write", &object, e);
        let add = |tar: &mut tar::Builder<&mut fs::File>, path: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            tar.append_data(&mut h, path, bytes).map_err(io)
        };
        add(&mut tar, "oci-layout", &layout_header()?)?;
        let mut seen = std::collections::HashSet::new();
        for desc in image.blobs() {
            if !seen.insert(desc.digest.clone()) {
                continue;
            }
            let mut h = tar::Header::new_ustar();
            h.set_size(desc.size);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_path(blob_path(&desc.digest)).map_err(io)?;
            h.set_cksum();
            let mut pipe = BlobReader::new(store, desc)?;
            tar.append(&h, &mut pipe).map_err(io)?;
            pipe.finish()?;
        }
        add(&mut tar, "index.json", index_json.as_bytes())?;
        if let Some(m) = &manifest_json {
            add(&mut tar, "manifest.json", m)?;
        }
        tar.finish().map_err(io)
    })
}
