//! `cargo xtask bench-images [OUT]`: builds the real Debian images the
//! benchmarks import, pull and export, as OCI image layouts under OUT
//! (default `target/bench-images`):
//!
//! * `debian-python`: five gzip layers: a minbase Debian root made by
//!   mmdebstrap; python3 installed in it; git and build-essential; a layer
//!   of deletions (whiteouts) and in-place changes (content, mode, mtime);
//!   and a layer that replaces `/usr/share/man` through an opaque marker.
//! * `debian-python-zstd`: the same layers recompressed with zstd (same
//!   diffIDs).
//! * `archives/*.oci.tar`: the layouts as tars, for `ctr images import`.
//!
//! Layers 2-4 are written by `strata layer diff` between successive root
//! trees (and read back by containerd in the benchmarks, an independent
//! check of them); layer 1 and the opaque layer by GNU tar. Needs root
//! (chroot) and `mmdebstrap`, `pigz`, `zstd`, `sha256sum` and network
//! access to the Debian mirror apt uses. A few minutes on 2 cores.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A layer blob in a layout.
struct Blob {
    digest: String,
    size: u64,
    diff_id: String,
}

fn sh(script: &str) -> anyhow::Result<()> {
    crate::run(Command::new("bash").args(["-euo", "pipefail", "-c", script]))
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(format!(
        "sha256:{}",
        text.split_whitespace().next().unwrap_or_default()
    ))
}

/// The sha256 of what `decompress FILE` prints (a layer's diffID).
fn diff_id(decompress: &str, path: &Path) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(format!("{decompress} {} | sha256sum", path.display()))
        .output()?;
    if !out.status.success() {
        bail!("hashing the tar stream of {} failed", path.display());
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(format!(
        "sha256:{}",
        text.split_whitespace().next().unwrap_or_default()
    ))
}

/// Moves `file` into `layout`'s blobs under its digest.
fn add_blob(layout: &Path, file: &Path) -> anyhow::Result<(String, u64)> {
    let digest = sha256(file)?;
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    let size = std::fs::metadata(file)?.len();
    std::fs::rename(file, dir.join(&digest["sha256:".len()..]))?;
    Ok((digest, size))
}

fn add_json(layout: &Path, json: &str) -> anyhow::Result<(String, u64)> {
    let tmp = layout.join("blob.json");
    std::fs::write(&tmp, json)?;
    add_blob(layout, &tmp)
}

/// Writes an OCI layout of `layers` (media type `layer_type`) at `layout`.
fn write_layout(
    layout: &Path,
    layers: &[Blob],
    layer_type: &str,
    history: &[&str],
) -> anyhow::Result<()> {
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("{:?}", l.diff_id)).collect();
    let hist: Vec<String> = history
        .iter()
        .map(|h| format!(r#"{{"created":"2026-01-01T00:00:00Z","created_by":{h:?}}}"#))
        .collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["bash"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[{}]}}"#,
        diff_ids.join(","),
        hist.join(",")
    );
    let (config_digest, config_size) = add_json(layout, &config)?;
    let mut descs = String::new();
    for (i, l) in layers.iter().enumerate() {
        if i > 0 {
            descs.push(',');
        }
        write!(
            descs,
            r#"{{"mediaType":"{layer_type}","digest":"{}","size":{}}}"#,
            l.digest, l.size
        )?;
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{descs}]}}"#
    );
    let (manifest_digest, manifest_size) = add_json(layout, &manifest)?;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#
    );
    std::fs::write(layout.join("index.json"), index)?;
    Ok(())
}

/// Runs `script` inside the root tree `root` with /proc, /dev and DNS.
fn in_chroot(root: &Path, script: &str) -> anyhow::Result<()> {
    let r = root.display();
    sh(&format!(
        "mount -t proc proc {r}/proc; mount --bind /dev {r}/dev; cp /etc/resolv.conf {r}/etc/resolv.conf
         rc=0; chroot {r} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive HOME=/root LANG=C.UTF-8 /bin/sh -ec {script:?} || rc=$?
         rm -f {r}/etc/resolv.conf; umount {r}/dev; umount {r}/proc; exit $rc"
    ))
}

/// The Debian mirror this machine's apt uses.
fn mirror() -> anyhow::Result<String> {
    if let Ok(m) = std::env::var("MIRROR") {
        return Ok(m);
    }
    let mut text = String::new();
    for dir in ["/etc/apt/sources.list.d", "/etc/apt"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    text.split_whitespace()
        .find(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("debian"))
        .map(str::to_owned)
        .context("no Debian mirror in apt's sources; set MIRROR")
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = args.first().map_or_else(
        || crate::workspace().join("target/bench-images"),
        PathBuf::from,
    );
    for tool in ["mmdebstrap", "pigz", "zstd", "sha256sum", "chroot", "tar"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is missing (apt-get install mmdebstrap pigz zstd coreutils tar)");
        }
    }
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "strata-cli"]))?;
    let strata = crate::target_dir().join("release/strata");
    let work = out.join(".work");
    if work.exists() {
        sh(&format!("rm -rf --one-file-system {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let stage = |i: usize| work.join(format!("s{i}"));
    let mirror = mirror()?;
    eprintln!("layer 1: mmdebstrap --variant=minbase bookworm from {mirror}");
    sh(&format!(
        "mmdebstrap --mode=root --variant=minbase bookworm {} {mirror} >&2
         rm -rf {0}/dev/* {0}/etc/resolv.conf; echo localhost > {0}/etc/hostname",
        stage(1).display()
    ))?;
    let steps: [(&str, &str); 3] = [
        (
            "apt-get install python3 python3-venv",
            "apt-get update -q; apt-get install -y -q --no-install-recommends python3 python3-venv; apt-get clean; rm -rf /var/lib/apt/lists/*",
        ),
        (
            "apt-get install git build-essential ca-certificates",
            "apt-get update -q; apt-get install -y -q --no-install-recommends git build-essential ca-certificates; apt-get clean; rm -rf /var/lib/apt/lists/*",
        ),
        (
            "rm -rf /usr/share/doc/* ... (deletions and in-place changes)",
            "rm -rf /usr/share/doc/* /usr/share/info /usr/share/locale/*/LC_MESSAGES /usr/lib/python3.11/__pycache__; echo 'export PS1=\"\\u@\\h:\\w$ \"' >> /etc/bash.bashrc; chmod 0700 /root; touch -d 2000-01-01 /etc/debian_version",
        ),
    ];
    for (i, (_, script)) in steps.iter().enumerate() {
        let (from, to) = (stage(i + 1), stage(i + 2));
        eprintln!("layer {}: {}", i + 2, steps[i].0);
        sh(&format!("cp -a {} {}", from.display(), to.display()))?;
        in_chroot(&to, script)?;
    }
    let layers_dir = work.join("layers");
    std::fs::create_dir_all(&layers_dir)?;
    let l = |i: usize| layers_dir.join(format!("l{i}.tar.gz"));
    sh(&format!(
        "tar --numeric-owner --xattrs --xattrs-include='*' --sort=name -C {} -cf - . | pigz -6 -n > {}",
        stage(1).display(),
        l(1).display()
    ))?;
    for i in 2..=4 {
        crate::run(
            Command::new(&strata)
                .args(["layer", "diff"])
                .arg(stage(i - 1))
                .arg(stage(i))
                .arg("-o")
                .arg(l(i))
                .args(["--compression", "gzip"]),
        )?;
    }
    // An opaque /usr/share/man: the marker and the new contents.
    let opaque = work.join("opaque");
    sh(&format!(
        "mkdir -p {o}/usr/share/man/man1; printf 'man pages removed from this image\\n' > {o}/usr/share/man/README
         printf '.TH HELLO 1\\n' > {o}/usr/share/man/man1/hello.1; : > {o}/usr/share/man/.wh..wh..opq
         chmod 0755 {o}/usr {o}/usr/share {o}/usr/share/man {o}/usr/share/man/man1
         tar --format=pax --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C {o} -cf - usr | pigz -6 -n > {}",
        l(5).display(),
        o = opaque.display()
    ))?;
    let history: Vec<&str> = std::iter::once("mmdebstrap --variant=minbase bookworm")
        .chain(steps.iter().map(|s| s.0))
        .chain(std::iter::once("replace /usr/share/man (opaque)"))
        .collect();
    for (name, zstd) in [("debian-python", false), ("debian-python-zstd", true)] {
        let layout = out.join(name);
        if layout.exists() {
            sh(&format!("rm -rf {}", layout.display()))?;
        }
        std::fs::create_dir_all(&layout)?;
        let mut blobs = Vec::new();
        for i in 1..=5 {
            let file = if zstd {
                let z = layers_dir.join(format!("l{i}.tar.zst"));
                sh(&format!(
                    "pigz -dc {} | zstd -3 -T0 -q -o {}",
                    l(i).display(),
                    z.display()
                ))?;
                z
            } else {
                let copy = layers_dir.join(format!("l{i}.copy.gz"));
                std::fs::copy(l(i), &copy)?;
                copy
            };
            let diff = diff_id(if zstd { "zstd -dc" } else { "pigz -dc" }, &file)?;
            let (digest, size) = add_blob(&layout, &file)?;
            blobs.push(Blob {
                digest,
                size,
                diff_id: diff,
            });
        }
        let media = if zstd {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        write_layout(&layout, &blobs, media, &history)?;
        std::fs::create_dir_all(out.join("archives"))?;
        sh(&format!(
            "tar -C {} -cf {}/archives/{name}.oci.tar .",
            layout.display(),
            out.display()
        ))?;
        eprintln!("wrote {}", layout.display());
    }
    sh(&format!("rm -rf --one-file-system {}", work.display()))?;
    Ok(())
}
