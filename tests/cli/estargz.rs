//! eStargz checked by the reference implementation: a Go program built
//! from Debian's stargz-snapshotter sources (`tests/go/estargz-oracle`)
//! opens every eStargz layer Strata writes (`layer diff`, `image export`),
//! verifies its TOC digest and every chunk digest and reads every file; and
//! Strata applies and imports the layers that Go code writes, checking them
//! against their TOC, with the landmark and TOC entries kept out of the
//! tree. A TOC digest that does not match exits 5.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use strata_testkit::cli::Env;
use strata_testkit::crash::Rng;
use strata_testkit::oci_layout::{Layout, sha256};
use strata_testkit::tree::{render, without_sockets};

const TOC_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The oracle, built once per test binary; `None` (the skip recorded)
/// when Go or the sources are missing.
fn oracle(test: &str) -> Option<PathBuf> {
    if !strata_testkit::require_tools(
        test,
        &[
            ("go", "golang-go"),
            (
                strata_testkit::go::STARGZ_SOURCES,
                "golang-github-containerd-stargz-snapshotter-dev",
            ),
        ],
    ) {
        return None;
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    Some(
        BUILT
            .get_or_init(|| {
                strata_testkit::go::estargz_oracle(Path::new(env!("CARGO_TARGET_TMPDIR")))
            })
            .clone(),
    )
}

/// The oracle's verdict on `blob`: its JSON, or its exit code and error.
fn check(oracle: &Path, blob: &Path, toc: &str) -> Result<Value, (i32, String)> {
    let out = Command::new(oracle)
        .args(["check", &s(blob), "--toc-digest", toc])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// Entries below `dir`, and the sha256 of every regular file by path.
fn inventory(dir: &Path) -> (usize, Vec<(String, String)>) {
    let (mut count, mut files) = (0, Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_socket() {
                continue;
            }
            count += 1;
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files.push((rel, sha256(&fs::read(e.path()).unwrap())));
            }
        }
    }
    files.sort();
    (count, files)
}

use std::os::unix::fs::FileTypeExt;

/// A tree with what eStargz must carry: files chunked several times over,
/// an empty file, hard links, symlinks, a fifo, an xattr, a setuid file, a
/// long name and deep directories.
fn special_tree(dir: &Path) {
    fs::create_dir_all(dir.join("usr/lib/deep/er/still")).unwrap();
    let big: Vec<u8> = (0..5_300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(dir.join("usr/lib/big.so"), &big).unwrap();
    fs::write(dir.join("usr/lib/deep/er/still/empty"), "").unwrap();
    fs::write(dir.join("usr/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::hard_link(dir.join("usr/tool"), dir.join("usr/lib/tool-again")).unwrap();
    std::os::unix::fs::symlink("../lib/big.so", dir.join("usr/lib/deep/link")).unwrap();
    fs::write(dir.join(format!("usr/{}", "n".repeat(150))), "long").unwrap();
    let setuid = dir.join("usr/su");
    fs::write(&setuid, "su").unwrap();
    fs::set_permissions(
        &setuid,
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(dir.join("usr/pipe"))
            .status()
            .unwrap()
            .success()
    );
    let _may_lack_user_xattrs = Command::new("setfattr")
        .args(["-n", "user.origin", "-v", "strata"])
        .arg(dir.join("usr/tool"))
        .status();
}

#[test]
fn go_reads_every_estargz_layer_strata_writes() {
    let name = "go_reads_every_estargz_layer_strata_writes";
    let Some(oracle) = oracle(name) else { return };
    let env = Env::strata();
    let empty = env.path("empty");
    fs::create_dir(&empty).unwrap();
    let mut trees = vec![env.path("special")];
    fs::create_dir(&trees[0]).unwrap();
    special_tree(&trees[0]);
    for seed in strata_testkit::random_tree::seeds("estargz_oracle", 3) {
        let dir = env.path(&format!("random-{seed}"));
        fs::create_dir(&dir).unwrap();
        strata_testkit::random_tree::populate(&dir, &mut Rng::new(seed), 80);
        strata_testkit::random_tree::utf8_names_only(&dir);
        trees.push(dir);
    }
    let (mut layers, mut files, mut chunks) = (0, 0, 0);
    for (i, tree) in trees.iter().enumerate() {
        let out = env.path(&format!("layer-{i}.esgz"));
        let mut args = vec![
            "--json".to_owned(),
            "layer".into(),
            "diff".into(),
            s(&empty),
            s(tree),
            "-o".into(),
            s(&out),
            "--compression".into(),
            "estargz".into(),
        ];
        if i % 2 == 0 {
            args.extend(["--chunk-size".into(), "65536".into()]);
        }
        if i == 0 {
            args.extend(["--prioritize".into(), "usr/tool".into()]);
            args.extend(["--prioritize".into(), "usr/lib/big.so".into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let written = env.run(&args).expect(0).json();
        assert_eq!(
            written["media_type"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let toc = written["toc_digest"].as_str().unwrap();
        let seen = check(&oracle, &out, toc).unwrap_or_else(|e| panic!("layer {i}: {e:?}"));
        assert_eq!(seen["diff_id"], written["diff_id"], "layer {i}");
        let (count, want) = inventory(tree);
        // The oracle's tree has the landmark (a regular file) too.
        assert_eq!(
            seen["entries"].as_u64().unwrap() as usize,
            count + 1,
            "layer {i}"
        );
        for (path, digest) in &want {
            let found = seen["tree"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == path.as_str())
                .unwrap_or_else(|| panic!("layer {i}: Go does not see {path}"));
            assert_eq!(found["sha256"], digest.as_str(), "layer {i}: {path}");
        }
        layers += 1;
        files += want.len();
        chunks += seen["chunks"].as_u64().unwrap();
    }

    // An image exported as eStargz: every layer opens in Go with the TOC
    // digest of its descriptor, and its diffID is the config's.
    let layout = Layout::new(&env.path("src-layout"));
    let plain: Vec<Vec<u8>> = trees
        .iter()
        .map(|t| {
            let out = Command::new("tar")
                .args(["--format=pax", "-C"])
                .arg(t)
                .args(["-cf", "-", "."])
                .output()
                .unwrap();
            assert!(out.status.success());
            out.stdout
        })
        .collect();
    let manifest = layout.image(&plain);
    layout.tag(&manifest, "v1");
    let src = format!("oci:{}:v1", s(&env.path("src-layout")));
    let img = env.import(&src, "img");
    let dest = env.path("out-layout");
    env.run(&[
        "image",
        "export",
        "img",
        &format!("oci:{}", s(&dest)),
        "--compression",
        "estargz",
        "--force-compression",
    ])
    .expect(0);
    let index: Value = serde_json::from_slice(&fs::read(dest.join("index.json")).unwrap()).unwrap();
    let blob = |d: &Value| dest.join("blobs/sha256").join(&d.as_str().unwrap()[7..]);
    let m: Value =
        serde_json::from_slice(&fs::read(blob(&index["manifests"][0]["digest"])).unwrap()).unwrap();
    let config: Value =
        serde_json::from_slice(&fs::read(blob(&m["config"]["digest"])).unwrap()).unwrap();
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        let toc = l["annotations"][TOC_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("layer {i}: no TOC annotation: {l}"));
        let seen = check(&oracle, &blob(&l["digest"]), toc)
            .unwrap_or_else(|e| panic!("exported layer {i}: {e:?}"));
        assert_eq!(
            seen["diff_id"], config["rootfs"]["diff_ids"][i],
            "exported layer {i}"
        );
        assert_eq!(
            l["annotations"]["io.containers.estargz.uncompressed-size"],
            seen["uncompressed_size"].to_string().as_str()
        );
        layers += 1;
    }
    eprintln!(
        "Go's estargz reader accepted {layers} layers Strata wrote ({files} files, {chunks} chunks from layer diff)"
    );

    // The exported image imports back into a fresh root as the same tree.
    let other = Env::strata();
    let back = other
        .run(&[
            "--json",
            "image",
            "import",
            &format!("oci:{}", s(&dest)),
            "--name",
            "back",
        ])
        .expect(0)
        .json()["ref"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = mounted(&env, &img);
    let b = mounted(&other, &back);
    assert_eq!(a, b);
    // Its ref's chain exported from there (a new manifest, the blobs as
    // they were imported): each layer keeps both annotations.
    let again = env.path("again-layout");
    other
        .run(&["image", "export", &back, &format!("oci:{}", s(&again))])
        .expect(0);
    let layers_of = |dir: &Path| -> Vec<Value> {
        let read = |d: &Value| -> Value {
            let file = dir.join("blobs/sha256").join(&d.as_str().unwrap()[7..]);
            serde_json::from_slice(&fs::read(file).unwrap()).unwrap()
        };
        let index: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let manifest = read(&index["manifests"][0]["digest"]);
        manifest["layers"].as_array().unwrap().clone()
    };
    assert_eq!(layers_of(&again), layers_of(&dest));

    // A wrong TOC digest: the oracle refuses it, so the check can fail.
    let first = env.path("layer-0.esgz");
    let wrong = format!("sha256:{}", "0".repeat(64));
    assert_eq!(check(&oracle, &first, &wrong).unwrap_err().0, 1);
}

/// What the ref `name` mounts, listed without the root itself.
fn mounted(env: &Env, name: &str) -> String {
    let dir = env.path(&format!("m-{name}"));
    fs::create_dir_all(&dir).unwrap();
    env.run(&["mount", name, &s(&dir)]).expect(0);
    let tree = render(&dir);
    env.run(&["umount", &s(&dir)]).expect(0);
    tree.lines().skip(1).collect::<Vec<_>>().join("\n")
}

#[test]
fn strata_reads_the_layers_go_writes() {
    let name = "strata_reads_the_layers_go_writes";
    let Some(oracle) = oracle(name) else { return };
    let env = Env::strata();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    special_tree(&src);
    let tar = env.path("plain.tar");
    assert!(
        Command::new("tar")
            .args(["--format=gnu", "--xattrs", "-C"])
            .arg(&src)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let blob = env.path("go.esgz");
    let out = Command::new(&oracle)
        .args([
            "build",
            &s(&tar),
            &s(&blob),
            "--prioritized",
            "usr/tool",
            "--chunk-size",
            "1048576",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    let toc = built["toc_digest"].as_str().unwrap();

    // `layer apply` checks the layer against its TOC and leaves the
    // format's entries out.
    let dir = env.path("applied");
    fs::create_dir(&dir).unwrap();
    let applied = env
        .run(&[
            "--json",
            "layer",
            "apply",
            &s(&blob),
            &s(&dir),
            "--toc-digest",
            toc,
        ])
        .expect(0)
        .json();
    assert_eq!(applied["compression"], "estargz");
    assert_eq!(applied["diff_id"], built["diff_id"]);
    for hidden in [
        "stargz.index.json",
        ".prefetch.landmark",
        ".no.prefetch.landmark",
    ] {
        assert!(!dir.join(hidden).exists(), "{hidden} was written");
    }
    let lines = |t: String| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(lines(without_sockets(&render(&src))), lines(render(&dir)));

    // A TOC digest that is not the layer's exits 5, as does a TOC digest
    // for a layer without one.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let other = env.path("other");
    fs::create_dir(&other).unwrap();
    let run = env
        .run(&[
            "layer",
            "apply",
            &s(&blob),
            &s(&other),
            "--toc-digest",
            &wrong,
        ])
        .expect(5);
    assert!(run.stderr.contains("eStargz TOC digest"), "{}", run.stderr);
    let run = env
        .run(&["layer", "apply", &s(&tar), &s(&other), "--toc-digest", toc])
        .expect(5);
    assert!(run.stderr.contains("no eStargz footer"), "{}", run.stderr);

    // As an image layer annotated with its TOC digest: imported, the same
    // tree; annotated with another digest: refused with exit 5, nothing
    // named.
    let layout = Layout::new(&env.path("layout"));
    let layer = layout.blob(&fs::read(&blob).unwrap());
    let layer_digest = sha256(&fs::read(&blob).unwrap());
    let config = layout.config(&[built["diff_id"].as_str().unwrap().to_owned()]);
    let mut desc = layer.desc("application/vnd.oci.image.layer.v1.tar+gzip");
    desc["annotations"] = json!({ TOC_ANNOTATION: toc });
    let good = layout.manifest(&config, vec![desc.clone()]);
    desc["annotations"] = json!({ TOC_ANNOTATION: wrong });
    let bad = layout.manifest(&config, vec![desc]);
    layout.index(vec![
        {
            let mut d = good.desc("application/vnd.oci.image.manifest.v1+json");
            d["annotations"] = json!({"org.opencontainers.image.ref.name": "good"});
            d
        },
        {
            let mut d = bad.desc("application/vnd.oci.image.manifest.v1+json");
            d["annotations"] = json!({"org.opencontainers.image.ref.name": "bad"});
            d
        },
    ]);
    let loc = |tag: &str| format!("oci:{}:{tag}", s(&env.path("layout")));
    // A lazy import reads the TOC by range and refuses the same, before
    // it records anything; the right one leaves the layer lazy.
    let fresh = Env::strata();
    let run = fresh
        .run(&["image", "import", &loc("bad"), "--lazy", "--name", "bad"])
        .expect(5);
    assert!(run.stderr.contains("eStargz TOC digest"), "{}", run.stderr);
    assert_eq!(
        fresh.run(&["--json", "image", "ls"]).expect(0).json(),
        json!([]),
        "nothing is named"
    );
    let lazy = fresh
        .run(&[
            "--json",
            "image",
            "import",
            &loc("good"),
            "--lazy",
            "--name",
            "good",
        ])
        .expect(0)
        .json();
    assert_eq!(lazy["lazy"], 1, "{lazy}");
    // The TOC was read by range: the layer's blob is not stored (the
    // documents are, the refused image's among them until a collection).
    let stored = fresh.run(&["content", "ls", "-q"]).expect(0).text();
    assert!(stored.lines().count() >= 2, "{stored}");
    assert!(!stored.contains(&layer_digest), "{stored}");
    fresh.run(&["check"]).expect(0);
    let run = env
        .run(&["image", "import", &loc("bad"), "--name", "bad"])
        .expect(5);
    assert!(run.stderr.contains("eStargz TOC digest"), "{}", run.stderr);
    let good = env.import(&loc("good"), "good");
    assert_eq!(lines(without_sockets(&render(&src))), mounted(&env, &good));
    // Found imported before, the layer still answers for the annotation.
    let run = env
        .run(&["image", "import", &loc("bad"), "--name", "bad"])
        .expect(5);
    assert!(run.stderr.contains("eStargz TOC digest"), "{}", run.stderr);
    env.run(&["image", "ls"]).expect(0);
    env.run(&["check"]).expect(0);
}
