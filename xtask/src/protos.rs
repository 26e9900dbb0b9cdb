//! `cargo xtask protos [--check]`: regenerates the checked-in gRPC
//! bindings of `crates/strata-api` from its `.proto` files, with protox
//! (a protobuf compiler in Rust: no `protoc`) and tonic-prost-build. With
//! `--check` (CI) nothing is written: it fails, naming the files, when the
//! checked-in code differs from what the `.proto` files generate.

use std::path::Path;

use anyhow::{Context, bail};

/// The `.proto` files, relative to the crate's `proto/` directory.
const PROTOS: &[&str] = &["containerd/mount.proto", "containerd/snapshots.proto"];

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let check = match args {
        [] => false,
        ["--check"] => true,
        _ => bail!("usage: cargo xtask protos [--check]"),
    };
    let krate = crate::workspace().join("crates/strata-api");
    let generated = krate.join("src/generated");
    let fresh = generate(&krate.join("proto"))?;
    let mut stale = Vec::new();
    for (name, code) in &fresh {
        let path = generated.join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != *code {
            stale.push(name.clone());
            if !check {
                std::fs::write(&path, code).with_context(|| format!("write {}", path.display()))?;
            }
        }
    }
    // A file no `.proto` generates any more.
    for entry in
        std::fs::read_dir(&generated).with_context(|| format!("read {}", generated.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !fresh.iter().any(|(n, _)| *n == name) {
            stale.push(name.clone());
            if !check {
                std::fs::remove_file(generated.join(&name))?;
            }
        }
    }
    match (check, stale.is_empty()) {
        (_, true) => eprintln!("protos: {} generated files are current", fresh.len()),
        (true, false) => bail!(
            "the checked-in bindings in {} differ from what the .proto files generate ({}): run `cargo xtask protos` and commit the result",
            generated.display(),
            stale.join(", ")
        ),
        (false, false) => eprintln!("protos: rewrote {}", stale.join(", ")),
    }
    Ok(())
}

/// The generated files (name, code) for the `.proto` files under `proto`.
fn generate(proto: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let fds = protox::compile(PROTOS, [proto]).context("compile the .proto files")?;
    let out = tempfile::tempdir()?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The transport (hyper, the connect helper) is the caller's
        // choice: strata-containerd brings it.
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .context("generate the bindings")?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(out.path())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let code = std::fs::read_to_string(entry.path())?;
        files.push((name, code));
    }
    files.sort();
    Ok(files)
}
