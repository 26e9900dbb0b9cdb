//! `strata image` from the shell, one process per command: OCI layouts and
//! docker archives in and out (umoci reads what Strata writes), a real
//! registry (Debian's docker-registry on 127.0.0.1) shared by two roots,
//! skopeo on the other end, basic auth with docker's config and a
//! credential helper, a registry serving a corrupt blob, and hostile
//! layouts and archives refused with exit 5 and nothing kept (ambiguous
//! manifests and indexes among them, and configs whose diffIDs are not
//! those of the layers a root already has), a slow pull that outlives
//! its registry token, and images copied registry to registry without a
//! root (mounted within one registry, streamed and checked across two).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use strata_testkit::cli::{Env, Run, finish};
use strata_testkit::layer_tar::{archive, entry};
use strata_testkit::oci_layout::{Blob, Layout, gzip, sha256};
use strata_testkit::registry::Registry;
use strata_testkit::throttle::Throttle;
use strata_testkit::token_gate::TokenGate;
use tar::EntryType;

fn env() -> Env {
    Env::strata()
}

/// Three layers: a base, a deletion, an opaque directory.
fn layers() -> Vec<Vec<u8>> {
    let none: &[u8] = b"";
    vec![
        archive(&[
            entry("etc/", EntryType::Directory, none, ""),
            entry("etc/os-release", EntryType::Regular, b"NAME=test\n", ""),
            entry("usr/", EntryType::Directory, none, ""),
            entry("usr/share/", EntryType::Directory, none, ""),
            entry("usr/share/doc/", EntryType::Directory, none, ""),
            entry("usr/share/doc/a", EntryType::Regular, b"a", ""),
            entry("usr/share/doc/b", EntryType::Regular, b"b", ""),
            entry("bin/", EntryType::Directory, none, ""),
            entry("bin/tool", EntryType::Regular, b"#!/bin/sh\n", ""),
            entry("bin/alias", EntryType::Symlink, none, "tool"),
            entry("bin/twin", EntryType::Link, none, "bin/tool"),
        ]),
        archive(&[
            entry("etc/.wh.os-release", EntryType::Regular, none, ""),
            entry("etc/new", EntryType::Regular, b"new", ""),
        ]),
        archive(&[
            entry("usr/share/doc/", EntryType::Directory, none, ""),
            entry("usr/share/doc/.wh..wh..opq", EntryType::Regular, none, ""),
            entry("usr/share/doc/c", EntryType::Regular, b"c", ""),
        ]),
    ]
}

/// A layout at `dir` holding the three-layer image under `tag`.
fn sample_layout(dir: &Path, tag: &str) -> (Layout, Blob) {
    let layout = Layout::new(dir);
    let manifest = layout.image(&layers());
    layout.tag(&manifest, tag);
    (layout, manifest)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The listing of what `r` mounts (`strata mount`, read-only).
fn mounted(env: &Env, r: &str) -> String {
    let dir = env.path(&format!("m-{r}"));
    fs::create_dir_all(&dir).unwrap();
    env.run(&["mount", r, &s(&dir)]).expect(0);
    let tree = strata_testkit::tree::render(&dir);
    env.run(&["umount", &s(&dir)]).expect(0);
    tree
}

/// The listing without its first line (the root directory itself, whose
/// mode and times each tool sets its own way).
fn below_root(tree: &str) -> String {
    tree.lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// A root (made with `first` options) holding the sample image, named
/// `app`: the root, the image's manifest, what the import printed.
fn root_with_app(first: &[&str]) -> (Env, Blob, Value) {
    let a = env();
    let (_, manifest) = sample_layout(&a.path("layout"), "v1");
    let layout = format!("oci:{}:v1", s(&a.path("layout")));
    let mut args = first.to_vec();
    args.extend(["import", layout.as_str(), "--name", "app"]);
    let got = import(&a, &args);
    (a, manifest, got)
}

fn import(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["--json", "image"];
    all.extend_from_slice(args);
    env.run(&all).expect(0).json()
}

/// Nothing named, and after a collection no blob and no snapshot left.
#[track_caller]
fn assert_empty(env: &Env) {
    assert_eq!(
        env.run(&["--json", "image", "ls"]).expect(0).json(),
        json!([])
    );
    env.run(&["gc"]).expect(0);
    assert_eq!(
        env.run(&["--json", "content", "ls"]).expect(0).json(),
        json!([])
    );
    assert_eq!(
        env.run(&["--json", "snapshot", "ls"]).expect(0).json(),
        json!([])
    );
}

/// Runs commands in `env` with a docker config that names a credential
/// helper for `host`, found on PATH, which answers `user` and `secret`.
fn helped<'a>(env: &'a Env, host: &str, user: &str, secret: &str) -> Helped<'a> {
    let (bin, config) = (env.path("bin"), env.path("helped"));
    for dir in [&bin, &config] {
        fs::create_dir_all(dir).unwrap();
    }
    let helper = bin.join("docker-credential-strata-test");
    let answer = json!({"ServerURL": "HOST", "Username": user, "Secret": secret})
        .to_string()
        .replace('"', "\\\"")
        .replace("HOST", "$host");
    fs::write(
        &helper,
        format!("#!/bin/sh\nread host\necho \"{answer}\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        config.join("config.json"),
        json!({"credHelpers": {host: "strata-test"}}).to_string(),
    )
    .unwrap();
    let path = format!("{}:{}", s(&bin), std::env::var("PATH").unwrap_or_default());
    Helped { env, config, path }
}

/// What [`helped`] set up.
struct Helped<'a> {
    env: &'a Env,
    config: std::path::PathBuf,
    path: String,
}

impl Helped<'_> {
    fn run(&self, args: &[&str]) -> Run {
        let mut c = self.env.cmd(args);
        c.env("DOCKER_CONFIG", &self.config).env("PATH", &self.path);
        finish(c.output().unwrap())
    }
}

fn registry_cmd(env: &Env, docker_config: &Path, args: &[&str]) -> Run {
    let mut c = env.cmd(args);
    c.env("DOCKER_CONFIG", docker_config);
    finish(c.output().unwrap())
}

#[test]
fn layouts_and_archives_round_trip() {
    if !strata_testkit::require_root("layouts_and_archives_round_trip")
        || !strata_testkit::require_tools("layouts_and_archives_round_trip", &[("umoci", "umoci")])
    {
        return;
    }
    let (a, manifest, got) = root_with_app(&[]);
    assert_eq!(got["name"], "app");
    assert_eq!(got["manifest"], manifest.digest.as_str());
    assert_eq!(
        got["fetched"], 5,
        "3 layers, the config, the manifest: {got}"
    );
    let top = got["ref"].as_str().unwrap().to_owned();
    let tree = mounted(&a, &top);
    assert!(
        !tree.contains("/etc/os-release"),
        "whiteout applied:\n{tree}"
    );
    assert!(tree.contains("/etc/new"), "{tree}");
    assert!(
        !tree.contains("/usr/share/doc/a"),
        "opaque directory applied:\n{tree}"
    );
    assert!(tree.contains("/usr/share/doc/c"), "{tree}");

    let listed = a
        .run(&["--json", "image", "inspect", "app"])
        .expect(0)
        .json();
    assert_eq!(listed["layers"].as_array().unwrap().len(), 3);

    // A named image written as stored keeps its manifest digest.
    let out = a.path("out");
    let w = a
        .run(&[
            "--json",
            "image",
            "export",
            "app",
            &format!("oci:{}:v2", s(&out)),
        ])
        .expect(0)
        .json();
    assert_eq!(w["manifest"], manifest.digest.as_str());
    // umoci, an independent reader, unpacks the same tree.
    let bundle = a.path("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:v2", s(&out)), &s(&bundle)])
        .output()
        .expect("run umoci (.ci/run installs it)");
    assert!(
        unpack.status.success(),
        "{}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    assert_eq!(
        below_root(&strata_testkit::tree::render(&bundle.join("rootfs"))),
        below_root(&tree)
    );

    // A docker archive in zstd, into another root: the same tree.
    let tarball = a.path("app.tar");
    a.run(&[
        "image",
        "export",
        "app",
        &format!("docker-archive:{}", s(&tarball)),
        "--compression",
        "zstd",
        "--force-compression",
    ])
    .expect(0);
    let b = env();
    let got = import(&b, &["import", &format!("docker-archive:{}", s(&tarball))]);
    let inspect = b
        .run(&["--json", "image", "inspect", got["name"].as_str().unwrap()])
        .expect(0)
        .json();
    for l in inspect["layers"].as_array().unwrap() {
        assert_eq!(
            l["media_type"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    assert_eq!(mounted(&b, got["ref"].as_str().unwrap()), tree);

    // The archive's manifest.json form alone (older docker save) too.
    let legacy = a.path("legacy.tar");
    {
        let layers = layers();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()},
        }))
        .unwrap();
        let mut t = tar::Builder::new(fs::File::create(&legacy).unwrap());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            t.append_data(&mut h, path, data).unwrap();
        };
        add("cfg.json", &config);
        let mut names = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let name = format!("l{i}/layer.tar");
            add(&name, l);
            names.push(name);
        }
        let manifest = serde_json::to_vec(
            &json!([{"Config": "cfg.json", "RepoTags": ["legacy:1"], "Layers": names}]),
        )
        .unwrap();
        add("manifest.json", &manifest);
        t.finish().unwrap();
    }
    let c = env();
    let got = import(&c, &["import", &format!("docker-archive:{}", s(&legacy))]);
    assert_eq!(got["name"], "legacy:1");
    assert_eq!(mounted(&c, got["ref"].as_str().unwrap()), tree);

    // Removing the name lets the collector take everything.
    a.run(&["image", "rm", "app"]).expect(0);
    a.run(&["image", "rm", "app"]).expect(3);
    assert_empty(&a);
}

/// Imports `location` into a fresh native root and expects exit 5 with
/// `says` in the message, and nothing kept.
#[track_caller]
/// skopeo's `oci-archive:` transport both ways: what Strata writes,
/// skopeo reads (no docker `manifest.json` in it); what skopeo writes,
/// Strata imports under its reference; a tar without an OCI layout, a
/// missing reference and an empty location are refused by name.
#[test]
fn oci_archives_as_skopeo_names_them() {
    let name = "oci_archives_as_skopeo_names_them";
    if !strata_testkit::require_root(name)
        || !strata_testkit::require_tools(name, &[("skopeo", "skopeo")])
    {
        return;
    }
    let (a, manifest, got) = root_with_app(&[]);
    let tree = mounted(&a, got["ref"].as_str().unwrap());
    let ours = a.path("ours.tar");
    let dest = format!("oci-archive:{}:example.com/app:1", s(&ours));
    let w = a
        .run(&["--json", "image", "export", "app", &dest])
        .expect(0)
        .json();
    assert_eq!(w["destination"], dest.as_str());
    assert_eq!(w["manifest"], manifest.digest.as_str());
    let members = Command::new("tar").arg("-tf").arg(&ours).output().unwrap();
    let members = String::from_utf8_lossy(&members.stdout).into_owned();
    assert!(members.lines().any(|m| m == "index.json"), "{members}");
    assert!(
        !members.lines().any(|m| m == "manifest.json"),
        "an OCI archive, not a docker one: {members}"
    );
    let inspect = Command::new("skopeo")
        .args(["inspect", "--raw", &dest])
        .output()
        .expect("run skopeo (.ci/run installs it)");
    assert!(
        inspect.status.success(),
        "skopeo reads what Strata wrote: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert_eq!(
        sha256(&inspect.stdout),
        manifest.digest,
        "skopeo finds the manifest Strata stored"
    );

    // What skopeo writes, from a layout, into a fresh root.
    let theirs = a.path("theirs.tar");
    let copy = Command::new("skopeo")
        .args([
            "copy",
            &format!("oci:{}:v1", s(&a.path("layout"))),
            &format!("oci-archive:{}:registry.example/team/tool:2", s(&theirs)),
        ])
        .output()
        .expect("run skopeo");
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let b = env();
    let from = format!("oci-archive:{}:registry.example/team/tool:2", s(&theirs));
    let got = import(&b, &["import", &from]);
    assert_eq!(got["name"], "registry.example/team/tool:2", "{got}");
    assert_eq!(got["source"], from.as_str());
    assert_eq!(
        below_root(&mounted(&b, got["ref"].as_str().unwrap())),
        below_root(&tree)
    );

    // Refusals, each naming what is wrong, nothing kept.
    let c = env();
    let run = c.run(&[
        "image",
        "import",
        &format!("oci-archive:{}:no/such:ref", s(&theirs)),
    ]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("no/such:ref"), "{}", run.stderr);
    let docker_only = c.path("docker-only.tar");
    fs::write(
        &docker_only,
        archive(&[entry(
            "manifest.json",
            EntryType::Regular,
            b"[{\"Config\":\"c.json\",\"RepoTags\":[\"x:1\"],\"Layers\":[]}]",
            "",
        )]),
    )
    .unwrap();
    let run = c.run(&[
        "image",
        "import",
        &format!("oci-archive:{}", s(&docker_only)),
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("has no OCI layout"), "{}", run.stderr);
    let run = c.run(&["image", "import", "oci-archive:"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("oci-archive: needs a file"),
        "{}",
        run.stderr
    );
    assert_empty(&c);
}

fn refused(location: &str, says: &str) {
    let e = env();
    let run = e.run(&["--backend", "native", "image", "import", location]);
    assert_eq!(run.code, 5, "{location}: stderr {}", run.stderr);
    assert!(
        run.stderr.contains(says),
        "{location}: wanted {says:?} in {}",
        run.stderr
    );
    assert_empty(&e);
}

#[test]
fn hostile_layouts_and_archives_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let oci = |name: &str| format!("oci:{}", s(&dir(name)));
    let layer = archive(&[entry("f", EntryType::Regular, b"data", "")]);
    let gz = gzip(&layer);
    let gzip_type = "application/vnd.oci.image.layer.v1.tar+gzip";

    // A blob whose bytes are not its digest.
    let (l, m) = sample_layout(&dir("mismatch"), "latest");
    let victim = l.blob_path(&m.digest);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    fs::write(&victim, bytes).unwrap();
    refused(&oci("mismatch"), "hashes to");

    // A descriptor whose size is wrong.
    let l = Layout::new(&dir("size"));
    let blob = l.blob(&gz);
    let mut d = blob.desc(gzip_type);
    d["size"] = json!(blob.size + 1);
    let config = l.config(&[sha256(&layer)]);
    let m = l.manifest(&config, vec![d]);
    l.tag(&m, "latest");
    refused(&oci("size"), "bytes where its descriptor says");

    // A truncated blob.
    let l = Layout::new(&dir("truncated"));
    let blob = l.blob(&gz);
    let config = l.config(&[sha256(&layer)]);
    let m = l.manifest(&config, vec![blob.desc(gzip_type)]);
    l.tag(&m, "latest");
    fs::write(l.blob_path(&blob.digest), &gz[..gz.len() / 2]).unwrap();
    refused(&oci("truncated"), "bytes where its descriptor says");

    // A diffID that is not the layer's.
    let l = Layout::new(&dir("diffid"));
    let blob = l.blob(&gz);
    let config = l.config(&[sha256(b"something else")]);
    let m = l.manifest(&config, vec![blob.desc(gzip_type)]);
    l.tag(&m, "latest");
    refused(&oci("diffid"), "diff");

    // A config listing fewer diffIDs than the manifest has layers.
    let l = Layout::new(&dir("count"));
    let blob = l.blob(&gz);
    let config = l.config(&[]);
    let m = l.manifest(&config, vec![blob.desc(gzip_type)]);
    l.tag(&m, "latest");
    refused(&oci("count"), "has 1 layers but its config lists 0 diffIDs");

    // A layer media type Strata does not unpack.
    let l = Layout::new(&dir("mediatype"));
    let blob = l.blob(&gz);
    let config = l.config(&[sha256(&layer)]);
    let m = l.manifest(&config, vec![blob.desc("application/x-evil+gzip")]);
    l.tag(&m, "latest");
    refused(&oci("mediatype"), "not a layer media type");

    // Two manifests and nothing to pick one.
    let l = Layout::new(&dir("ambiguous"));
    let m1 = l.image(std::slice::from_ref(&layer));
    let m2 = l.image(&[archive(&[entry("g", EntryType::Regular, b"x", "")])]);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    l.index(vec![m1.desc(mt), m2.desc(mt)]);
    refused(&oci("ambiguous"), "ambiguous");

    // A digest that tries to be a path.
    let l = Layout::new(&dir("pathdigest"));
    l.index(vec![
        json!({"mediaType": mt, "digest": "sha256:../../../../etc/passwd", "size": 10}),
    ]);
    refused(&oci("pathdigest"), "../../../../etc/passwd");

    // Indexes nested past the limit.
    let l = Layout::new(&dir("nested"));
    let mut top = l.image(std::slice::from_ref(&layer)).desc(mt);
    for _ in 0..12 {
        let idx = l.json(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top]}));
        top = idx.desc("application/vnd.oci.image.index.v1+json");
    }
    l.index(vec![top]);
    refused(&oci("nested"), "deeper than");

    // No manifest for this machine's platform.
    let l = Layout::new(&dir("platform"));
    let mut d = l.image(std::slice::from_ref(&layer)).desc(mt);
    d["platform"] = json!({"os": "linux", "architecture": "s390x"});
    l.index(vec![d]);
    refused(&oci("platform"), "no manifest for");

    // An image built for another platform than the one asked for.
    let (_, _) = sample_layout(&dir("other-arch"), "latest");
    let e = env();
    let run = e.run(&[
        "--backend",
        "native",
        "image",
        "import",
        &oci("other-arch"),
        "--platform",
        "linux/arm64",
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is an image for linux/amd64, not linux/arm64"),
        "{}",
        run.stderr
    );
    assert_empty(&e);

    // A manifest over the 4 MiB limit (refused before it is read).
    let l = Layout::new(&dir("huge"));
    let big = l.blob(&vec![b' '; 5 << 20]);
    l.index(vec![big.desc(mt)]);
    refused(&oci("huge"), "refused");

    // An archive with a member outside its root.
    let evil = dir("evil.tar");
    fs::write(
        &evil,
        archive(&[
            entry("../escape", EntryType::Regular, b"x", ""),
            entry("manifest.json", EntryType::Regular, b"[]", ""),
        ]),
    )
    .unwrap();
    refused(
        &format!("docker-archive:{}", s(&evil)),
        "outside the archive's root",
    );

    // An archive whose manifest.json names a layer through a link that
    // climbs out.
    let links = dir("links.tar");
    let manifest =
        serde_json::to_vec(&json!([{"Config": "c.json", "Layers": ["l/layer.tar"]}])).unwrap();
    fs::write(
        &links,
        archive(&[
            entry("c.json", EntryType::Regular, b"{}", ""),
            entry(
                "l/layer.tar",
                EntryType::Symlink,
                b"",
                "../../../etc/passwd",
            ),
            entry("manifest.json", EntryType::Regular, &manifest, ""),
        ]),
    )
    .unwrap();
    refused(
        &format!("docker-archive:{}", s(&links)),
        "outside the archive's root",
    );

    // Not a layout at all.
    fs::create_dir_all(dir("empty")).unwrap();
    refused(&oci("empty"), "is not an OCI image layout");
}

/// The JSON file at `path`.
fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Document `doc` of layout `l` changed by `edit`, written as a new blob.
fn edited(l: &Layout, doc: &Blob, edit: impl FnOnce(&mut Value)) -> Blob {
    let mut v = read_json(&l.blob_path(&doc.digest));
    edit(&mut v);
    l.json(&v)
}

/// A docker archive at `file` holding the OCI layout at `dir`.
fn layout_archive(dir: &Path, file: &Path) {
    let mut t = tar::Builder::new(fs::File::create(file).unwrap());
    t.append_dir_all(".", dir).unwrap();
    t.finish().unwrap();
}

/// A document another reader could take for the other kind (a manifest
/// that lists manifests, an index that has layers or a config), or whose
/// own media type is not the one its descriptor gives, is refused with its
/// digest named, from a layout, an archive and a registry alike.
#[test]
fn ambiguous_manifests_and_indexes_are_refused() {
    let name = "ambiguous_manifests_and_indexes_are_refused";
    if !strata_testkit::require_tools(name, strata_testkit::REGISTRY_TOOLS)
        || !strata_testkit::require_tools(name, &[("skopeo", "skopeo"), ("curl", "curl")])
    {
        return;
    }
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let oci = |name: &str| format!("oci:{}", s(&dir(name)));
    let layer = archive(&[entry("f", EntryType::Regular, b"data", "")]);
    let image = |l: &Layout| l.image(std::slice::from_ref(&layer));

    // A manifest that also lists manifests: from a layout, then from the
    // same layout in a docker archive.
    let l = Layout::new(&dir("manifests"));
    let m = edited(&l, &image(&l), |v| v["manifests"] = json!([]));
    l.tag(&m, "latest");
    let says = format!("manifest {}: is ambiguous", m.digest);
    refused(&oci("manifests"), &says);
    let tarball = dir("manifests.tar");
    layout_archive(&l.dir, &tarball);
    refused(&format!("docker-archive:{}", s(&tarball)), &says);

    // Indexes that carry a manifest's layers or config.
    for field in ["layers", "config"] {
        let l = Layout::new(&dir(field));
        let m = image(&l);
        let idx = l.json(&json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [m.desc(MANIFEST)], field: []}));
        l.index(vec![idx.desc(INDEX)]);
        refused(&oci(field), &format!("index {}: is ambiguous", idx.digest));
    }
    // The layout's own index.json too.
    let l = Layout::new(&dir("top"));
    let m = image(&l);
    l.tag(&m, "latest");
    let top = l.dir.join("index.json");
    let mut v = read_json(&top);
    v["layers"] = json!([]);
    fs::write(&top, serde_json::to_vec(&v).unwrap()).unwrap();
    refused(&oci("top"), "index.json: is ambiguous");

    // A manifest and an index whose own media type is not their
    // descriptor's.
    let l = Layout::new(&dir("manifest-type"));
    let typed = image(&l);
    l.index(vec![typed.desc(DOCKER_MANIFEST)]);
    let says = format!(
        "manifest {}: says its media type is {MANIFEST:?}",
        typed.digest
    );
    refused(&oci("manifest-type"), &says);
    let l = Layout::new(&dir("index-type"));
    let m = image(&l);
    let idx =
        l.json(&json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [m.desc(MANIFEST)]}));
    l.index(vec![idx.desc(DOCKER_LIST)]);
    refused(
        &oci("index-type"),
        &format!("index {}: says its media type is {INDEX:?}", idx.digest),
    );

    // A registry (docker-registry refuses ambiguous documents itself, but
    // keeps an index whose entry misstates its manifest's media type).
    let reg = Registry::start(None);
    let l = Layout::new(&dir("pushed"));
    l.tag(&image(&l), "latest");
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", s(&l.dir)),
            &format!("docker://{}/amb:good", reg.addr),
        ])
        .output()
        .expect("run skopeo (.ci/run installs it)");
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let index =
        json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [typed.desc(DOCKER_MANIFEST)]});
    let put = Command::new("curl")
        .args(["-sSf", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {INDEX}"))
        .arg("--data-binary")
        .arg(index.to_string())
        .arg(format!("http://{}/v2/amb/manifests/bad", reg.addr))
        .output()
        .expect("run curl");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    refused(&format!("docker://{}/amb:bad", reg.addr), &says);
}

/// A layer found already imported (by its blob or by its diffID) is the
/// layer the config describes or the image is refused: exit 5 naming the
/// layer and both diffIDs, nothing named, the root as it was.
#[test]
fn diff_ids_must_match_the_layers_found() {
    let e = env();
    let tars = [
        archive(&[entry("zero", EntryType::Regular, b"0", "")]),
        archive(&[entry("one", EntryType::Regular, b"1", "")]),
    ];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    // A layout of the layers `layers` of `tars` with config `diff_ids`.
    let image = |name: &str, layers: &[usize], diff_ids: &[String]| {
        let l = Layout::new(&e.path(name));
        let descs = layers
            .iter()
            .map(|&i| {
                l.blob(&gzip(&tars[i]))
                    .desc("application/vnd.oci.image.layer.v1.tar+gzip")
            })
            .collect();
        let m = l.manifest(&l.config(diff_ids), descs);
        l.tag(&m, "latest");
        format!("oci:{}", s(&l.dir))
    };
    let a = image("a", &[0, 1], &diff_ids);
    e.run(&["--backend", "native", "image", "import", &a, "--name", "a"])
        .expect(0);
    let state = || {
        ["image", "content", "snapshot", "ref"]
            .map(|noun| e.run(&["--json", noun, "ls"]).expect(0).json())
    };
    let before = state();
    // Importing `location` is refused, naming each of `names`, and leaves
    // the root as it was.
    let refused_keeping = |location: &str, names: &[&String]| {
        let run = e.run(&["image", "import", location, "--name", "refused"]);
        assert_eq!(run.code, 5, "{}", run.stderr);
        for named in names {
            assert!(
                run.stderr.contains(named.as_str()),
                "{named} in {}",
                run.stderr
            );
        }
        e.run(&["gc"]).expect(0);
        assert_eq!(state(), before);
    };
    let one = sha256(&gzip(&tars[1]));

    // Found by its blob: the second layer is a's, its diffID is not.
    let wrong = sha256(b"another layer");
    let b = image("b", &[0, 1], &[diff_ids[0].clone(), wrong.clone()]);
    refused_keeping(&b, &[&one, &wrong, &diff_ids[1]]);

    // Found by its diffID: the blob known to hold layer one says it is
    // layer zero, which the root has (on no parent).
    let c = image("c", &[1], &diff_ids[..1]);
    refused_keeping(&c, &[&one, &diff_ids[0], &diff_ids[1]]);
}

#[test]
fn a_registry_shares_one_cache_between_two_roots() {
    let name = "a_registry_shares_one_cache_between_two_roots";
    if !strata_testkit::require_root(name)
        || !strata_testkit::require_tools(name, strata_testkit::REGISTRY_TOOLS)
        || !strata_testkit::require_tools(name, &[("skopeo", "skopeo")])
    {
        return;
    }
    let reg = Registry::start(None);
    let r = &reg.addr;
    let (a, _, got) = root_with_app(&[]);
    let tree = mounted(&a, got["ref"].as_str().unwrap());

    let gz = a
        .run(&["--json", "image", "push", "app", &format!("{r}/app:gzip")])
        .expect(0)
        .json();
    assert_eq!(gz["uploaded"], 4, "3 layers and the config: {gz}");
    let zst = a
        .run(&[
            "--json",
            "image",
            "push",
            "app",
            &format!("{r}/app:zstd"),
            "--compression",
            "zstd",
            "--force-compression",
        ])
        .expect(0)
        .json();
    assert_eq!(
        zst["uploaded"], 4,
        "new layer blobs and a new config: {zst}"
    );
    // Nothing is uploaded twice: the same repository has it, another one
    // mounts it.
    let again = a
        .run(&["--json", "image", "push", "app", &format!("{r}/app:gzip")])
        .expect(0)
        .json();
    assert_eq!(
        (again["uploaded"].clone(), again["present"].clone()),
        (json!(0), json!(4))
    );
    let other = a
        .run(&[
            "--json",
            "image",
            "push",
            "app",
            &format!("{r}/elsewhere:1"),
        ])
        .expect(0)
        .json();
    assert_eq!(
        (other["uploaded"].clone(), other["mounted"].clone()),
        (json!(0), json!(4)),
        "{other}"
    );
    // A root that had the image from elsewhere (a layout) learns from a
    // pull that finds every blob present that the repository has them, so
    // its push to another repository of the registry mounts them too.
    let (c, _, _) = root_with_app(&[]);
    let pulled = import(&c, &["pull", &format!("{r}/app:gzip")]);
    assert_eq!(pulled["fetched"], 0, "{pulled}");
    let third = c
        .run(&["--json", "image", "push", "app", &format!("{r}/third:1")])
        .expect(0)
        .json();
    assert_eq!(
        (third["uploaded"].clone(), third["mounted"].clone()),
        (json!(0), json!(4)),
        "{third}"
    );

    let b = env();
    for tag in ["gzip", "zstd"] {
        let got = import(&b, &["pull", &format!("{r}/app:{tag}")]);
        assert_eq!(mounted(&b, got["ref"].as_str().unwrap()), tree, "{tag}");
    }
    let snapshots = b.run(&["--json", "snapshot", "ls"]).expect(0).json();
    // Both compressions share one chain: same diffIDs, unpacked once.
    assert_eq!(snapshots.as_array().unwrap().len(), 3, "{snapshots}");
    let first = import(&b, &["pull", &format!("{r}/app:gzip"), "--name", "again"]);
    assert_eq!(
        first["fetched"], 0,
        "a second pull transfers nothing: {first}"
    );
    assert_eq!(
        b.run(&["--json", "snapshot", "ls"]).expect(0).json(),
        snapshots,
        "and unpacks nothing"
    );

    // skopeo, on the other end, reads what Strata pushed...
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{r}/app:gzip"),
        ])
        .output()
        .expect("run skopeo (.ci/run installs it)");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let seen: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(seen["Digest"], gz["manifest"]);
    assert_eq!(seen["Layers"].as_array().unwrap().len(), 3);
    let back = a.path("back");
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{r}/app:zstd"),
            &format!("oci:{}:x", s(&back)),
        ])
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let got = import(
        &a,
        &["import", &format!("oci:{}:x", s(&back)), "--name", "back"],
    );
    assert_eq!(
        got["manifest"], zst["manifest"],
        "skopeo copied the manifest as it is"
    );
    // ...and pushes what Strata pulls.
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", s(&a.path("layout"))),
            &format!("docker://{r}/from-skopeo:1"),
        ])
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let c = env();
    let got = import(&c, &["pull", &format!("docker://{r}/from-skopeo:1")]);
    assert_eq!(mounted(&c, got["ref"].as_str().unwrap()), tree);

    // What is not there is a clear not-found.
    let missing = c.run(&["image", "pull", &format!("{r}/nothing:here")]);
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
}

#[test]
fn registry_credentials_from_docker_config_and_helpers() {
    if !strata_testkit::require_tools(
        "registry_credentials_from_docker_config_and_helpers",
        strata_testkit::REGISTRY_TOOLS,
    ) {
        return;
    }
    let reg = Registry::start(Some(("strata", "s3cret")));
    let r = &reg.addr;
    let (a, _, _) = root_with_app(&["--backend", "native"]);

    let anonymous = a.path("anonymous");
    fs::create_dir_all(&anonymous).unwrap();
    let refused = registry_cmd(
        &a,
        &anonymous,
        &["image", "push", "app", &format!("{r}/app:1")],
    );
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("unauthorized"),
        "{}",
        refused.stderr
    );

    let wrong = a.path("wrong");
    fs::create_dir_all(&wrong).unwrap();
    fs::write(
        wrong.join("config.json"),
        json!({"auths": {r.as_str(): {"username": "strata", "password": "nope"}}}).to_string(),
    )
    .unwrap();
    let run = registry_cmd(&a, &wrong, &["image", "push", "app", &format!("{r}/app:1")]);
    assert_eq!(run.code, 4, "{}", run.stderr);

    let config = a.path("docker");
    fs::create_dir_all(&config).unwrap();
    use base64_free::encode;
    fs::write(
        config.join("config.json"),
        json!({"auths": {format!("https://{r}/v1/"): {"auth": encode("strata:s3cret")}}})
            .to_string(),
    )
    .unwrap();
    registry_cmd(
        &a,
        &config,
        &["image", "push", "app", &format!("{r}/app:1")],
    )
    .expect(0);

    // A credential helper named for the host, found on PATH.
    let b = env();
    let got = helped(&b, r, "strata", "s3cret")
        .run(&[
            "--backend",
            "native",
            "--json",
            "image",
            "pull",
            &format!("{r}/app:1"),
        ])
        .expect(0)
        .json();
    assert_eq!(got["fetched"], 5, "{got}");
}

#[test]
fn a_registry_serving_a_corrupt_blob_commits_nothing() {
    if !strata_testkit::require_tools(
        "a_registry_serving_a_corrupt_blob_commits_nothing",
        strata_testkit::REGISTRY_TOOLS,
    ) {
        return;
    }
    let reg = Registry::start(None);
    let r = &reg.addr;
    let (a, _, _) = root_with_app(&["--backend", "native"]);
    a.run(&["image", "push", "app", &format!("{r}/app:1")])
        .expect(0);
    let inspect = a
        .run(&["--json", "image", "inspect", "app"])
        .expect(0)
        .json();
    let layer = inspect["layers"][2]["digest"].as_str().unwrap().to_owned();
    let file = reg.blob_file(&layer);
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&file, bytes).unwrap();

    let b = env();
    let run = b.run(&[
        "--backend",
        "native",
        "image",
        "pull",
        &format!("{r}/app:1"),
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("corrupt"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&layer),
        "names the blob: {}",
        run.stderr
    );
    assert_empty(&b);
}

/// Imports into `env` an image `big` of `count` layers, each one file of
/// `size` random bytes (which gzip cannot shrink).
fn import_random_layers(env: &Env, count: usize, size: usize) {
    let mut rng = strata_testkit::crash::Rng::new(7);
    let layers: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let bytes: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
            archive(&[entry(
                format!("blob{i}"),
                EntryType::Regular,
                &bytes[..],
                "",
            )])
        })
        .collect();
    let layout = Layout::new(&env.path("layout"));
    let manifest = layout.image(&layers);
    layout.tag(&manifest, "v1");
    env.import(&format!("oci:{}:v1", s(&env.path("layout"))), "big");
}

#[test]
fn a_push_outlives_its_registry_token_and_a_failed_upload() {
    if !strata_testkit::require_tools(
        "a_push_outlives_its_registry_token_and_a_failed_upload",
        strata_testkit::REGISTRY_TOOLS,
    ) {
        return;
    }
    let (reg, other) = (Registry::start(None), Registry::start(None));
    let a = env();
    // Five layers of three upload pieces (1 MiB each) and a token good for
    // eight requests: tokens run out between the pieces of an upload.
    import_random_layers(&a, 5, 2_500_000);
    let gate = TokenGate::start_counted(&reg.addr, 8);
    let pushed = a
        .run(&[
            "--json",
            "image",
            "push",
            "big",
            &format!("{}/big:1", gate.addr),
        ])
        .expect(0)
        .json();
    assert_eq!(pushed["uploaded"], 6, "{pushed}");
    assert!(
        gate.refused_pieces() >= 1,
        "no upload outlived its token ({} tokens, {} refusals)",
        gate.tokens_issued(),
        gate.refusals()
    );
    // A copy's uploads are started over when the registry fails them.
    let into = TokenGate::start(&other.addr, std::time::Duration::from_secs(3600));
    into.fail_next("PATCH ", 2);
    let copied = lazy_copy(
        &format!("{}/big:1", reg.addr),
        &format!("{}/big:2", into.addr),
    );
    assert_eq!(copied["uploaded"], 6, "{copied}");
    assert_eq!(into.failed(), 2, "the gate failed no upload");
    // What arrived is the image pushed.
    for r in [
        format!("{}/big:1", reg.addr),
        format!("{}/big:2", other.addr),
    ] {
        let pulled = env().run(&["--json", "image", "pull", &r]).expect(0).json();
        assert_eq!(pulled["manifest"], pushed["manifest"], "{r}: {pulled}");
    }
}

/// `strata --json lazy copy FROM TO`, which must succeed: its report.
fn lazy_copy(from: &str, to: &str) -> Value {
    env()
        .run(&["--json", "lazy", "copy", from, to])
        .expect(0)
        .json()
}

/// [`registry_with_random_image`] behind a [`TokenGate`] whose tokens
/// last an hour.
fn gated_registry_with_random_image(
    test: &str,
    count: usize,
    size: usize,
    repo: &str,
) -> Option<(Registry, TokenGate)> {
    let reg = registry_with_random_image(test, count, size, repo)?;
    let gate = TokenGate::start(&reg.addr, std::time::Duration::from_secs(3600));
    Some((reg, gate))
}

/// For test `test` (skipped by name without the registry): a registry
/// holding an image of `count` random layers of `size` bytes as
/// `REPO:1`.
fn registry_with_random_image(
    test: &str,
    count: usize,
    size: usize,
    repo: &str,
) -> Option<Registry> {
    if !strata_testkit::require_tools(test, strata_testkit::REGISTRY_TOOLS) {
        return None;
    }
    let reg = Registry::start(None);
    let a = env();
    import_random_layers(&a, count, size);
    a.run(&["image", "push", "big", &format!("{}/{repo}:1", reg.addr)])
        .expect(0);
    Some(reg)
}

#[test]
fn a_pull_outlives_its_registry_token() {
    // Eight layers of bytes gzip cannot shrink, fetched four at a time
    // over a slow link: the later ones start after the token has expired.
    let Some(reg) =
        registry_with_random_image("a_pull_outlives_its_registry_token", 8, 300_000, "big")
    else {
        return;
    };

    let gate = TokenGate::start(&reg.addr, std::time::Duration::from_secs(1));
    let slow = Throttle::start(&gate.addr, 600_000, std::time::Duration::ZERO);
    let b = env();
    let got = b
        .run(&["--json", "image", "pull", &format!("{}/big:1", slow.addr)])
        .expect(0)
        .json();
    assert_eq!(got["fetched"], 10, "{got}");
    assert!(
        gate.tokens_issued() >= 2,
        "the pull never needed a second token ({} issued, {} refusals): it did not outlive the first",
        gate.tokens_issued(),
        gate.refusals()
    );
}

/// A registry that asks no credentials is asked so once per command, not
/// before every request (oci-client, finding no token to keep for it,
/// would ask again each time: one more round trip per blob).
#[test]
fn a_registry_without_credentials_is_not_asked_for_them_per_request() {
    if !strata_testkit::require_tools(
        "a_registry_without_credentials_is_not_asked_for_them_per_request",
        strata_testkit::REGISTRY_TOOLS,
    ) {
        return;
    }
    let reg = Registry::start(None);
    let a = env();
    import_random_layers(&a, 5, 1000);
    let asked = || reg.log().matches("\"GET /v2/ HTTP").count();
    let before = asked();
    a.run(&["image", "push", "big", &format!("{}/open:1", reg.addr)])
        .expect(0);
    // Pushing 7 blobs and a manifest: a check, a start, an upload and a
    // finish each at least.
    let pushed = asked() - before;
    assert!(pushed <= 2, "the push asked for credentials {pushed} times");
    let before = asked();
    let b = env();
    let got = b
        .run(&["--json", "image", "pull", &format!("{}/open:1", reg.addr)])
        .expect(0)
        .json();
    assert_eq!(got["fetched"], 7, "{got}");
    let pulled = asked() - before;
    assert!(pulled <= 2, "the pull asked for credentials {pulled} times");
}

/// A registry answering 503 (under load) is asked again after a doubling
/// wait: a pull whose manifest reads fail twice succeeds; one whose reads
/// keep failing gives up after its attempts (4) and exits 4, naming the
/// registry and the refusal.
#[test]
fn a_registry_under_load_is_asked_again_then_given_up_on() {
    let Some((_reg, gate)) = gated_registry_with_random_image(
        "a_registry_under_load_is_asked_again_then_given_up_on",
        1,
        1000,
        "busy",
    ) else {
        return;
    };
    let reference = format!("{}/busy:1", gate.addr);

    gate.fail_next("/manifests/", 2);
    let b = env();
    let got = b
        .run(&["--json", "image", "pull", &reference])
        .expect(0)
        .json();
    assert_eq!(got["fetched"], 3, "{got}");
    assert_eq!(gate.failed(), 2, "the gate failed no manifest read");

    gate.fail_next("/manifests/", 100);
    let c = env();
    let run = c.run(&["image", "pull", &reference]).expect(4);
    assert_eq!(gate.failed(), 2 + 4, "{}", run.stderr);
    assert!(run.stderr.contains(&gate.addr), "{}", run.stderr);
    assert!(run.stderr.contains("503"), "{}", run.stderr);
}

/// On a registry that hands out tokens per repository, a blob is mounted
/// from another repository with a token that covers both (oci-client's
/// own covers the target only, and the registry then starts an upload
/// instead): a copy, and a push from a root that pulled the image, mount
/// every blob and upload none, also when the tokens run out between the
/// mounts.
#[test]
fn a_registry_with_tokens_mounts_blobs_across_repositories() {
    let Some((reg, gate)) = gated_registry_with_random_image(
        "a_registry_with_tokens_mounts_blobs_across_repositories",
        3,
        1000,
        "base",
    ) else {
        return;
    };
    let sent = |v: &Value| (v["uploaded"].clone(), v["mounted"].clone());
    let source = format!("{}/base:1", gate.addr);
    let copied = lazy_copy(&source, &format!("{}/team/app:1", gate.addr));
    assert_eq!(sent(&copied), (0.into(), 4.into()), "{copied}");
    let b = env();
    let pulled = b
        .run(&["--json", "image", "pull", &source, "--name", "base"])
        .expect(0)
        .json();
    let push = |repo: &str| {
        let to = format!("{}/{repo}:1", gate.addr);
        b.run(&["--json", "image", "push", "base", &to])
            .expect(0)
            .json()
    };
    let pushed = push("other/app");
    assert_eq!(sent(&pushed), (0.into(), 4.into()), "{pushed}");
    assert_eq!(gate.mounts_refused(), 0);
    // A registry that refuses (401, as distribution does) a mount from a
    // repository the user may not read: the push uploads, and asks to
    // mount from each of the two repositories that have the blobs for
    // its first blob only (twice: once more with a new token), not for
    // every blob.
    for repo in ["base", "other/app"] {
        gate.deny(repo);
    }
    gate.refuse_mounts();
    let denied = push("fourth/app");
    assert_eq!(sent(&denied), (4.into(), 0.into()), "{denied}");
    assert_eq!(gate.mounts_refused(), 4, "asked again per blob");
    // Tokens good for three requests each: the fourth mount finds its
    // token spent, asks a new one and mounts.
    let spent = TokenGate::start_counted(&reg.addr, 3);
    let copied = lazy_copy(
        &format!("{}/base:1", spent.addr),
        &format!("{}/third/app:1", spent.addr),
    );
    assert_eq!(sent(&copied), (0.into(), 4.into()), "{copied}");
    // What the mounts and uploads made is the image.
    for repo in ["team/app", "other/app", "third/app", "fourth/app"] {
        let got = env()
            .run(&["--json", "image", "pull", &format!("{}/{repo}:1", reg.addr)])
            .expect(0)
            .json();
        assert_eq!(got["manifest"], pulled["manifest"], "{repo}: {got}");
    }
}

/// Writes docker's `config.json` into `dir` as `docker login` leaves it
/// for registry `addr` after handing out identity token `token`: a user
/// name without a password beside the token.
fn identity_login(dir: &Path, addr: &str, token: &str) {
    let entry = json!({"auth": base64_free::encode("00000000-0000:"), "identitytoken": token});
    let config_json = json!({"auths": {addr: entry}});
    fs::write(dir.join("config.json"), config_json.to_string()).unwrap();
}

#[test]
fn an_identity_token_is_exchanged_at_the_token_service_and_never_sent_to_the_registry() {
    let Some((reg, gate)) = gated_registry_with_random_image(
        "an_identity_token_is_exchanged_at_the_token_service_and_never_sent_to_the_registry",
        2,
        1000,
        "base",
    ) else {
        return;
    };
    gate.accept_identity("refresh-1");
    let b = env();
    let (none, config) = (b.path("no-credentials"), b.path("docker"));
    for dir in [&none, &config] {
        fs::create_dir_all(dir).unwrap();
    }
    let login = |token: &str| identity_login(&config, &gate.addr, token);
    let source = format!("{}/base:1", gate.addr);
    let refused = registry_cmd(&b, &none, &["image", "pull", &source]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    login("not-the-token");
    let wrong = registry_cmd(&b, &config, &["image", "pull", &source]);
    assert_eq!(wrong.code, 4, "{}", wrong.stderr);
    for said in ["identity token", "invalid_grant"] {
        assert!(wrong.stderr.contains(said), "{}", wrong.stderr);
    }
    login("refresh-1");
    // A token service that fails for a while is asked again, as any
    // registry request is.
    gate.fail_next("/token", 2);
    let pulled = registry_cmd(
        &b,
        &config,
        &["--json", "image", "pull", &source, "--name", "base"],
    )
    .expect(0)
    .json();
    assert_eq!(pulled["fetched"], 4, "{pulled}");
    assert_eq!(gate.failed(), 2);
    // A push to another repository mounts every blob: the token it
    // mounts with covers both repositories, exchanged for the identity
    // token too.
    let pushed = registry_cmd(
        &b,
        &config,
        &[
            "--json",
            "image",
            "push",
            "base",
            &format!("{}/team/app:1", gate.addr),
        ],
    )
    .expect(0)
    .json();
    assert_eq!(
        (&pushed["uploaded"], &pushed["mounted"]),
        (&json!(0), &json!(3)),
        "{pushed}"
    );
    // A credential helper's answer for the user `<token>` is an identity
    // token too.
    let got = helped(&env(), &gate.addr, "<token>", "refresh-1")
        .run(&["--json", "image", "pull", &source])
        .expect(0)
        .json();
    assert_eq!(got["manifest"], pulled["manifest"], "{got}");
    assert_eq!(gate.identity_leaks(), 0, "sent to the registry itself");
    // Tokens good for two requests run out during a push (at its third
    // blob check): each renewal exchanges the identity token once, for
    // pulls and pushes, and the push's reads go on with that token (no
    // exchange asks for pulls alone).
    let short = TokenGate::start_counted(&reg.addr, 2);
    short.accept_identity("refresh-1");
    let short_config = b.path("docker-short");
    fs::create_dir_all(&short_config).unwrap();
    identity_login(&short_config, &short.addr, "refresh-1");
    registry_cmd(
        &b,
        &short_config,
        &["image", "push", "base", &format!("{}/base:2", short.addr)],
    )
    .expect(0);
    let exchanges = short.exchanges();
    assert!(short.refusals() > 0, "no token ran out: {exchanges:?}");
    assert!(exchanges.len() > 1, "never renewed: {exchanges:?}");
    assert!(
        exchanges
            .iter()
            .all(|scopes| scopes.iter().any(|s| s.ends_with(":pull,push"))),
        "{exchanges:?}"
    );
    assert_eq!(short.identity_leaks(), 0, "sent to the registry itself");
}

#[test]
fn an_image_is_copied_registry_to_registry_without_a_root() {
    if !strata_testkit::require_tools(
        "an_image_is_copied_registry_to_registry_without_a_root",
        strata_testkit::REGISTRY_TOOLS,
    ) {
        return;
    }
    let (one, other) = (Registry::start(None), Registry::start(None));
    let (a, _, _) = root_with_app(&["--backend", "native"]);
    let pushed = a
        .run(&[
            "--json",
            "image",
            "push",
            "app",
            &format!("{}/app:1", one.addr),
        ])
        .expect(0)
        .json();
    let blobs = pushed["uploaded"].as_u64().unwrap();
    let copy = |from: &str, to: &str| {
        let b = env();
        let run = b.run(&["--json", "lazy", "copy", from, to]);
        // No root was made for it.
        assert!(!b.path("root").exists(), "lazy copy opened a root");
        run
    };
    let counts = |v: &Value| {
        (
            v["uploaded"].as_u64().unwrap(),
            v["mounted"].as_u64().unwrap(),
            v["present"].as_u64().unwrap(),
        )
    };
    // Within one registry every blob is mounted: no bytes move.
    let src = format!("{}/app:1", one.addr);
    let mounted = copy(&src, &format!("{}/team/app:2", one.addr))
        .expect(0)
        .json();
    assert_eq!(counts(&mounted), (0, blobs, 0), "{mounted}");
    assert_eq!(mounted["manifest"], pushed["manifest"], "{mounted}");
    // To another registry each is streamed through; a second copy finds
    // them there.
    let dst = format!("{}/app:2", other.addr);
    let sent = copy(&src, &dst).expect(0).json();
    assert_eq!(counts(&sent), (blobs, 0, 0), "{sent}");
    assert_eq!(sent["manifest"], pushed["manifest"], "{sent}");
    // Each copy read the config once, to resolve the image, and sent those
    // bytes on rather than reading it again.
    let config = a
        .run(&["--json", "image", "inspect", "app"])
        .expect(0)
        .json()["config"]
        .as_str()
        .unwrap()
        .to_owned();
    let config_reads = || {
        one.log()
            .lines()
            .filter(|l| {
                l.contains("response completed")
                    && l.contains("http.request.method=GET")
                    && l.contains(&format!("/blobs/{config}"))
            })
            .count()
    };
    // The log is written after each response: wait for both reads, then
    // a little longer for a third that should not come.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while config_reads() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(config_reads(), 2, "{}", one.log());
    let again = copy(&src, &dst).expect(0).json();
    assert_eq!(counts(&again), (0, 0, blobs), "{again}");
    // What arrived pulls as the original.
    let b = env();
    let pulled = b
        .run(&["--json", "image", "pull", &dst, "--name", "copied"])
        .expect(0)
        .json();
    assert_eq!(pulled["manifest"], pushed["manifest"], "{pulled}");

    // A source serving other bytes for a layer: the copy fails naming the
    // blob, and the target gets neither that blob nor the manifest.
    let inspect = a
        .run(&["--json", "image", "inspect", "app"])
        .expect(0)
        .json();
    let layer = inspect["layers"][1]["digest"].as_str().unwrap().to_owned();
    let file = one.blob_file(&layer);
    let mut bytes = fs::read(&file).unwrap();
    bytes[100] ^= 0x01;
    fs::write(&file, bytes).unwrap();
    let third = Registry::start(None);
    let bad = format!("{}/bad:1", third.addr);
    let run = copy(&src, &bad);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("another digest"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&layer),
        "names the blob: {}",
        run.stderr
    );
    assert!(!third.blob_file(&layer).exists(), "the bad blob was stored");
    // The registries' own records of tagged manifests.
    let tags = |r: &Registry, repo: &str| {
        let blob = r.blob_file(&layer);
        let v2 = blob.ancestors().nth(5).unwrap().to_path_buf();
        v2.join("repositories").join(repo).join("_manifests/tags")
    };
    assert!(tags(&other, "app").join("2").is_dir(), "the path is wrong");
    assert!(!tags(&third, "bad").exists(), "the manifest was pushed");
}

/// Base64 for a test's docker config, without a dependency.
mod base64_free {
    pub fn encode(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &c)| acc | u32::from(c) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// Layers of `image inspect NAME`, each lazy or not.
fn lazy_layers(env: &Env, name: &str) -> Vec<bool> {
    let layers = env.image_layers(name);
    layers
        .iter()
        .map(|l| l["lazy"].as_bool().unwrap())
        .collect()
}

#[test]
fn a_lazy_pull_records_refs_nothing_reads_until_they_are_filled_in_place() {
    let name = "a_lazy_pull_records_refs_nothing_reads_until_they_are_filled_in_place";
    if !strata_testkit::require_root(name)
        || !strata_testkit::require_tools(name, strata_testkit::REGISTRY_TOOLS)
    {
        return;
    }
    let mut reg = Registry::start(None);
    let addr = reg.addr.clone();
    let r = &addr;
    let (a, _, got) = root_with_app(&[]);
    let tree = mounted(&a, got["ref"].as_str().unwrap());
    let esgz = format!("{r}/app:esgz");
    a.run(&[
        "image",
        "push",
        "app",
        &esgz,
        "--compression",
        "estargz",
        "--force-compression",
    ])
    .expect(0);

    // Only the manifest and the config come; the refs are recorded.
    let b = env();
    let pulled = b.run(&["--json", "image", "pull", &esgz, "--lazy", "--name", "lazy"]);
    assert!(
        pulled.stderr.contains("3 of 3 layers of lazy left lazy"),
        "{}",
        pulled.stderr
    );
    let pulled = pulled.expect(0).json();
    assert_eq!(
        (pulled["fetched"].clone(), pulled["lazy"].clone()),
        (json!(2), json!(3)),
        "{pulled}"
    );
    let top = pulled["ref"].as_str().unwrap().to_owned();
    assert_eq!(lazy_layers(&b, "lazy"), [true, true, true]);
    // Blobs in a root.
    let stored = |env: &Env| {
        let listed = env.run(&["--json", "content", "ls"]).expect(0).json();
        listed.as_array().unwrap().len()
    };
    assert_eq!(stored(&b), 2, "no layer blob is here");
    b.run(&["check"]).expect(0);

    // Nothing reads a lazy ref, or takes its placeholder for an empty tree.
    let dir = b.path("m");
    fs::create_dir_all(&dir).unwrap();
    let refused = b.run(&["mount", &top, &s(&dir)]).expect(4);
    assert!(refused.stderr.contains("is lazy"), "{}", refused.stderr);
    // A new image of its chain needs its files.
    let refused = b
        .run(&[
            "image",
            "export",
            "lazy",
            &format!("oci:{}:1", s(&b.path("out"))),
            "--compression",
            "zstd",
        ])
        .expect(4);
    assert!(refused.stderr.contains("is lazy"), "{}", refused.stderr);
    // ... and kept the refs' records (each names its layer's blob).
    let blobs = |env: &Env| -> Vec<String> {
        let listed = env.run(&["--json", "ref", "ls"]).expect(0).json();
        let mut blobs: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["blob"].to_string())
            .collect();
        blobs.sort();
        blobs
    };
    let inspected = b
        .run(&["--json", "image", "inspect", "lazy"])
        .expect(0)
        .json();
    let mut layers: Vec<String> = inspected["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].to_string())
        .collect();
    layers.sort();
    assert_eq!(blobs(&b), layers);
    let refused = b.run(&["ref", "new", &top]).expect(4);
    assert!(refused.stderr.contains("is lazy"), "{}", refused.stderr);

    // Pushed without being downloaded: mounted within the registry,
    // streamed through to another one (checked, not stored), where an
    // eager pull finds the original tree.
    let within = b
        .run(&["--json", "image", "push", "lazy", &format!("{r}/copied:1")])
        .expect(0)
        .json();
    assert_eq!(within["mounted"], 4, "the layers and the config: {within}");
    let other = Registry::start(None);
    let across = format!("{}/app:streamed", other.addr);
    let streamed = b
        .run(&["--json", "image", "push", "lazy", &across])
        .expect(0)
        .json();
    assert_eq!(
        streamed["uploaded"], 4,
        "the layers and the config: {streamed}"
    );
    assert_eq!(streamed["manifest"], pulled["manifest"], "{streamed}");
    assert_eq!(stored(&b), 2, "no layer blob was stored");
    // Where the target has every blob, the source is not even reached.
    reg.stop();
    let again = b
        .run(&[
            "--json",
            "image",
            "push",
            "lazy",
            &format!("{}/app:again", other.addr),
        ])
        .expect(0)
        .json();
    assert_eq!(again["present"], 4, "the layers and the config: {again}");
    reg.restart();
    let d = env();
    let copy = import(&d, &["pull", &across, "--name", "copy"]);
    assert_eq!(mounted(&d, copy["ref"].as_str().unwrap()), tree);

    // Unlazied: the same refs, filled in place, the original tree.
    let filled = b
        .run(&["--json", "image", "unlazy", "lazy"])
        .expect(0)
        .json();
    assert_eq!(
        (filled["ref"].as_str(), filled["fetched"].clone()),
        (Some(top.as_str()), json!(3)),
        "{filled}"
    );
    assert_eq!(lazy_layers(&b, "lazy"), [false, false, false]);
    assert_eq!(mounted(&b, &top), tree);
    b.run(&["check"]).expect(0);
    b.run(&["image", "rm", "lazy"]).expect(0);
    assert_empty(&b);

    // An eager pull of an image pulled lazily fills the same refs, from
    // the blobs it fetches; and an image without eStargz layers is pulled
    // whole, which a note says.
    let c = env();
    let lazy = import(&c, &["pull", &esgz, "--lazy", "--name", "lazy"]);
    let eager = import(&c, &["pull", &esgz, "--name", "eager"]);
    assert_eq!(eager["ref"], lazy["ref"], "{eager}");
    assert_eq!(eager["fetched"], 3, "the layers only: {eager}");
    let again = c.run(&[
        "--json", "image", "pull", &esgz, "--lazy", "--name", "again",
    ]);
    assert!(
        again.stderr.contains("no layer of again was left lazy"),
        "{}",
        again.stderr
    );
    assert_eq!(again.expect(0).json()["lazy"], 0, "the root has them");
    assert_eq!(lazy_layers(&c, "lazy"), [false, false, false]);
    assert_eq!(mounted(&c, lazy["ref"].as_str().unwrap()), tree);
    let gz = format!("{r}/app:gzip");
    a.run(&["image", "push", "app", &gz]).expect(0);
    let whole = c.run(&["--json", "image", "pull", &gz, "--lazy", "--name", "gz"]);
    assert!(whole.stderr.contains("was left lazy"), "{}", whole.stderr);
    assert_eq!(whole.expect(0).json()["lazy"], 0);
    assert_eq!(lazy_layers(&c, "gz"), [false, false, false]);
    c.run(&["image", "rm", "lazy", "eager", "again", "gz"])
        .expect(0);
    assert_empty(&c);

    // Exported to a layout, which holds the layers: they are fetched
    // into the root on the way, so an unlazy then fetches nothing.
    let e = env();
    import(&e, &["pull", &esgz, "--lazy", "--name", "lazy"]);
    let out = e.path("out");
    let written = e
        .run(&[
            "--json",
            "image",
            "export",
            "lazy",
            &format!("oci:{}:1", s(&out)),
        ])
        .expect(0)
        .json();
    assert_eq!(written["manifest"], pulled["manifest"], "{written}");
    assert_eq!(lazy_layers(&e, "lazy"), [true, true, true], "no ref filled");
    let filled = e
        .run(&["--json", "image", "unlazy", "lazy"])
        .expect(0)
        .json();
    assert_eq!(filled["fetched"], 0, "{filled}");
    assert_eq!(lazy_layers(&e, "lazy"), [false, false, false]);
    e.run(&["check"]).expect(0);
    e.run(&["image", "rm", "lazy"]).expect(0);
    assert_empty(&e);

    // Imported lazily from that layout, the image is pushed with its
    // layers fetched from the layout into the root on the way; an eager
    // pull of what was pushed finds the original tree.
    let f = env();
    let layout = format!("oci:{}:1", s(&out));
    let recorded = import(&f, &["import", &layout, "--lazy", "--name", "copy"]);
    assert_eq!(recorded["lazy"], 3, "{recorded}");
    let target = format!("{r}/from-layout:1");
    f.run(&["image", "push", "copy", &target]).expect(0);
    assert_eq!(stored(&f), 5, "the layers too");
    let g = env();
    let copy = import(&g, &["pull", &target, "--name", "copy"]);
    assert_eq!(mounted(&g, copy["ref"].as_str().unwrap()), tree);

    // A lazy image whose config lies about its top layer's diffID blocks
    // no eager import of the same layers, and is refused once they are
    // here: its claim is checked then, as an eager pull checks it.
    let l = Layout::new(&out);
    let entry = read_json(&out.join("index.json"))["manifests"][0].clone();
    let manifest = read_json(&l.blob_path(entry["digest"].as_str().unwrap()));
    let config = edited(
        &l,
        &Blob {
            digest: manifest["config"]["digest"].as_str().unwrap().to_owned(),
            size: manifest["config"]["size"].as_u64().unwrap(),
        },
        |c| c["rootfs"]["diff_ids"][2] = json!(sha256(b"another layer")),
    );
    let mut lying = manifest.clone();
    lying["config"]["digest"] = json!(config.digest);
    lying["config"]["size"] = json!(config.size);
    let mut lying = l
        .json(&lying)
        .desc("application/vnd.oci.image.manifest.v1+json");
    lying["annotations"] = json!({"org.opencontainers.image.ref.name": "lying"});
    l.index(vec![entry, lying]);
    let h = env();
    import(
        &h,
        &[
            "import",
            &format!("oci:{}:lying", s(&out)),
            "--lazy",
            "--name",
            "lying",
        ],
    );
    let honest = import(&h, &["import", &layout, "--name", "honest"]);
    assert_eq!(
        honest["fetched"], 5,
        "its own documents, and the layers: {honest}"
    );
    assert_eq!(lazy_layers(&h, "lying"), [false, false, false]);
    let refused = h.run(&["image", "unlazy", "lying"]).expect(5);
    assert!(refused.stderr.contains("diffID"), "{}", refused.stderr);
    h.run(&["check"]).expect(0);
}
