//! OCI image layouts (`oci-layout`, `index.json`, `blobs/ALG/HEX`), read
//! from a directory or from inside an archive, and written to a
//! directory.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image as oci;
use strata_content::ContentStore;
use strata_core::{Descriptor, Digest, media};
use strata_leases::ProgressTracker;

use crate::error::{OciError, Result};
use crate::image::{Image, copy_blob, parse_described, read_blob, read_bounded};
use crate::source::{IMAGE_NAME_ANNOTATION, Roots, Source, ingest_reader};

/// The annotation naming an index entry's tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A tree of files an image is read from: a directory or an archive.
pub(crate) trait Files: Send + Sync + 'static {
    /// For messages.
    fn describe(&self) -> String;
    /// Opens the regular file at relative `path` and says its size;
    /// [`OciError::NotFound`] when there is none.
    fn open(&self, path: &str) -> Result<(Box<dyn Read + Send>, u64)>;
    /// The regular file at `path`, to be read at offsets, and its size,
    /// when these files can be read by range; `None` when they cannot (an
    /// archive's members are read as one stream).
    fn open_at(&self, _path: &str) -> Result<Option<(fs::File, u64)>> {
        Ok(None)
    }
}

/// A directory's files. Only regular files are read: a symbolic link
/// where a blob should be is refused, not followed.
pub(crate) struct DirFiles {
    pub(crate) dir: PathBuf,
}

impl Files for DirFiles {
    fn describe(&self) -> String {
        format!("layout {}", self.dir.display())
    }

    fn open(&self, path: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let (f, size) = self.open_file(path)?;
        Ok((Box::new(f), size))
    }

    fn open_at(&self, path: &str) -> Result<Option<(fs::File, u64)>> {
        self.open_file(path).map(Some)
    }
}

impl DirFiles {
    /// The regular file at `path` and its size.
    fn open_file(&self, path: &str) -> Result<(fs::File, u64)> {
        let full = self.dir.join(path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OciError::not_found(
                    self.describe(),
                    format!("has no {path}"),
                ));
            }
            Err(e) => return Err(OciError::io("stat", full.display(), e)),
        };
        if !meta.file_type().is_file() {
            return Err(OciError::invalid(
                self.describe(),
                format!("{path} is not a regular file"),
            ));
        }
        let f = fs::File::open(&full).map_err(|e| OciError::io("open", full.display(), e))?;
        Ok((f, meta.len()))
    }
}

/// The path of a blob inside an OCI layout, relative to its directory
/// (a digest is validated when parsed, so it cannot climb out).
pub fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// An OCI layout over some files, with the tag picked in it.
pub(crate) struct LayoutSource<F> {
    pub(crate) files: Arc<F>,
    pub(crate) tag: Option<String>,
}

/// The entries of `index.json` that `tag` names: an exact
/// `org.opencontainers.image.ref.name`, else one ending in `:tag`
/// (containerd writes full names there).
fn tagged(
    object: &str,
    index: &oci::ImageIndex,
    tag: Option<&str>,
) -> Result<Vec<oci::Descriptor>> {
    let all = index.manifests();
    let Some(tag) = tag else {
        return Ok(all.clone());
    };
    let name_of = |d: &oci::Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let exact: Vec<_> = all
        .iter()
        .filter(|d| name_of(d).as_deref() == Some(tag))
        .cloned()
        .collect();
    if !exact.is_empty() {
        return Ok(exact);
    }
    let suffix = format!(":{tag}");
    let loose: Vec<_> = all
        .iter()
        .filter(|d| name_of(d).is_some_and(|n| n.ends_with(&suffix)))
        .cloned()
        .collect();
    if loose.is_empty() {
        let names: Vec<String> = all.iter().filter_map(name_of).collect();
        return Err(OciError::not_found(
            object,
            format!("has no tag {tag:?} (tags: {})", names.join(", ")),
        ));
    }
    Ok(loose)
}

impl<F: Files> LayoutSource<F> {
    fn document(&self, path: &str) -> Result<Vec<u8>> {
        let (r, _) = self.files.open(path)?;
        read_bounded(&format!("{} {path}", self.files.describe()), r)
    }
}

#[async_trait::async_trait]
impl<F: Files> Source for LayoutSource<F> {
    fn name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.files.describe()),
            None => self.files.describe(),
        }
    }

    async fn roots(&self, _store: &ContentStore) -> Result<Roots> {
        let object = self.files.describe();
        let document = |path: &str| match self.document(path) {
            Err(OciError::NotFound { .. }) => Err(OciError::invalid(
                &object,
                format!("is not an OCI image layout: it has no {path}"),
            )),
            other => other,
        };
        let header: oci::OciLayout = crate::image::parse_document(
            &format!("{object} oci-layout"),
            &document("oci-layout")?,
        )?;
        if !header.image_layout_version().starts_with("1.") {
            return Err(OciError::invalid(
                &object,
                format!(
                    "has image layout version {:?}; 1.x is understood",
                    header.image_layout_version()
                ),
            ));
        }
        let index: oci::ImageIndex = parse_described(
            &format!("{object} index.json"),
            &document("index.json")?,
            media::OCI_INDEX,
        )?;
        Ok(Roots {
            entries: tagged(&object, &index, self.tag.as_deref())?,
            stored: 0,
        })
    }

    async fn read_range(
        &self,
        desc: &Descriptor,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>> {
        let path = blob_path(&desc.digest);
        let Some(opened) = self.files.open_at(&path).transpose() else {
            return Ok(None);
        };
        let file = self.described(desc, opened)?;
        let full = format!("{} {path}", self.files.describe());
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| OciError::io("read", &full, e))?;
            Ok(Some(buf))
        })
        .await
        .map_err(|e| OciError::io("read blob", &path, std::io::Error::other(e)))?
    }

    async fn fetch(
        &self,
        store: &ContentStore,
        desc: &Descriptor,
        progress: &Arc<ProgressTracker>,
    ) -> Result<()> {
        let object = self.files.describe();
        let path = blob_path(&desc.digest);
        let reader = self.described(desc, self.files.open(&path))?;
        let (store, desc, progress) = (store.clone(), desc.clone(), Arc::clone(progress));
        tokio::task::spawn_blocking(move || {
            ingest_reader(&store, &object, &desc, reader, &progress)
        })
        .await
        .map_err(|e| OciError::io("read blob", &path, std::io::Error::other(e)))?
    }
}

impl<F: Files> LayoutSource<F> {
    /// What opening blob `desc` gave, once its size is the descriptor's:
    /// a blob missing is named, one of another size refused.
    fn described<T>(&self, desc: &Descriptor, opened: Result<(T, u64)>) -> Result<T> {
        let object = self.files.describe();
        let (blob, size) = match opened {
            Err(OciError::NotFound { .. }) => {
                return Err(OciError::not_found(
                    &object,
                    format!("has no blob {} ({})", desc.digest, blob_path(&desc.digest)),
                ));
            }
            other => other?,
        };
        if size != desc.size {
            return Err(OciError::invalid(
                &object,
                format!(
                    "blob {} has {size} bytes where its descriptor says {}",
                    desc.digest, desc.size
                ),
            ));
        }
        Ok(blob)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory, synced before it is renamed into place.
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| OciError::io("create", tmp.display(), e))?;
        fill(&mut f)?;
        f.flush()
            .map_err(|e| OciError::io("write", tmp.display(), e))?;
        f.sync_all()
            .map_err(|e| OciError::io("fsync", tmp.display(), e))?;
        fs::rename(&tmp, path).map_err(|e| OciError::io("rename into place", path.display(), e))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| OciError::io("fsync", dir.display(), e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The index entry of `image` under `tag` (and `full_name`, when given),
/// with the config's platform.
pub(crate) fn index_entry(
    store: &ContentStore,
    image: &Image,
    tag: &str,
    full_name: Option<&str>,
) -> Result<oci::Descriptor> {
    let mut entry = oci::Descriptor::from(&image.manifest);
    let config: oci::ImageConfiguration = crate::image::parse_document(
        &format!("config {}", image.config.digest),
        &read_blob(store, &image.config)?,
    )?;
    let mut platform = oci::PlatformBuilder::default()
        .os(config.os().clone())
        .architecture(config.architecture().clone());
    if let Some(v) = config.variant() {
        platform = platform.variant(v.clone());
    }
    entry.set_platform(Some(platform.build().map_err(|e| {
        OciError::invalid(format!("config {}", image.config.digest), e.to_string())
    })?));
    let mut annotations = entry.annotations().clone().unwrap_or_default();
    annotations.retain(|k, _| k != media::UNCOMPRESSED_LABEL);
    annotations.insert(REF_NAME.to_owned(), tag.to_owned());
    if let Some(name) = full_name {
        annotations.insert(IMAGE_NAME_ANNOTATION.to_owned(), name.to_owned());
    }
    entry.set_annotations(Some(annotations));
    Ok(entry)
}

/// The `oci-layout` file of the layouts Strata writes.
pub(crate) fn layout_header() -> Result<Vec<u8>> {
    let layout = oci::OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(|e| OciError::invalid("oci-layout", e.to_string()))?;
    layout
        .to_string()
        .map(String::into_bytes)
        .map_err(|e| OciError::invalid("oci-layout", e.to_string()))
}

/// Writes `image` into the OCI layout at `dir` (made when missing) under
/// `tag`: blobs it lacks are copied in, an entry of the same tag is
/// replaced, other entries stay. Each file is synced and renamed into
/// place, `index.json` last.
pub fn write_layout(store: &ContentStore, image: &Image, dir: &Path, tag: &str) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| OciError::io("create", dir.display(), e))?;
    let header = dir.join("oci-layout");
    if !header.exists() {
        let bytes = layout_header()?;
        write_atomic(&header, |f| {
            f.write_all(&bytes)
                .map_err(|e| OciError::io("write", header.display(), e))
        })?;
    }
    for desc in image.blobs() {
        let path = dir.join(blob_path(&desc.digest));
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == desc.size) {
            continue;
        }
        let parent = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(parent).map_err(|e| OciError::io("create", parent.display(), e))?;
        write_atomic(&path, |f| copy_blob(store, desc, f))?;
    }
    let index_path = dir.join("index.json");
    let files = DirFiles {
        dir: dir.to_owned(),
    };
    let mut manifests = match files.open("index.json") {
        Ok((r, _)) => {
            let object = format!("{} index.json", files.describe());
            let index: oci::ImageIndex =
                parse_described(&object, &read_bounded(&object, r)?, media::OCI_INDEX)?;
            index.manifests().clone()
        }
        Err(OciError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    manifests.retain(|d| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .is_none_or(|n| n != tag)
    });
    manifests.push(index_entry(store, image, tag, None)?);
    let index = oci::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(oci::MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| OciError::invalid("index.json", e.to_string()))?;
    write_atomic(&index_path, |f| {
        index
            .to_writer(f)
            .map_err(|e| OciError::invalid("index.json", e.to_string()))
    })
}
