//! The strata-cache examples, run the way their documentation says: the
//! demo's base image is exported as an OCI layout, `import_image` imports
//! it by name into a fresh root, `build_step` (root only: it mounts) builds
//! on it and exports the result, and the CLI imports that result into a
//! third root, which checks every digest. Part of `cargo xtask test`, so an
//! example that rots fails the suite.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

pub fn run(skips: &Path) -> anyhow::Result<()> {
    let ws = crate::workspace();
    crate::run(crate::cargo().args([
        "build",
        "-p",
        "strata-cli",
        "-p",
        "strata-cache",
        "--bins",
        "--examples",
    ]))?;
    let bin = crate::target_dir().join("debug");
    let strata = bin.join("strata");
    let dir = ws.join("target/examples-run");
    if dir.exists() {
        // A run that failed may have left its ref mounted.
        let _ = Command::new("umount").arg(dir.join("mnt")).status();
        crate::run(
            Command::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(&dir),
        )?;
    }
    std::fs::create_dir_all(&dir)?;
    let at = |name: &str| dir.join(name).display().to_string();
    let strata_in = |root: &str, args: &[&str]| {
        crate::run(Command::new(&strata).args(["--root", &at(root)]).args(args))
    };
    strata_in("demo-root", &["demo"])?;
    let layout = format!("oci:{}:latest", at("layout"));
    strata_in("demo-root", &["image", "export", "demo/base:1", &layout])?;
    crate::run(Command::new(bin.join("examples/import_image")).args([
        &at("root"),
        &layout,
        "app",
    ]))?;
    strata_in("root", &["image", "inspect", "app"])?;
    if !crate::is_root() {
        let line = "SKIPPED strata-cache example build_step: needs root (it mounts)";
        if std::env::var_os("STRATA_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
            bail!("{line}, and STRATA_REQUIRE_PRIVILEGED=1 forbids skipping");
        }
        eprintln!("{line}");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(skips)?;
        writeln!(log, "{line}")?;
        return Ok(());
    }
    crate::run(Command::new(bin.join("examples/build_step")).args([
        &at("root"),
        "app",
        &at("out"),
    ]))?;
    // What it wrote imports elsewhere and holds the file the step made.
    let imported = Command::new(&strata)
        .args(["--root", &at("check-root"), "--json", "image", "import"])
        .arg(format!("oci:{}", at("out")))
        .output()
        .context("run strata image import")?;
    if !imported.status.success() {
        bail!(
            "importing what build_step wrote failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    let top: serde_json::Value = serde_json::from_slice(&imported.stdout)?;
    let top = top["ref"].as_str().context("import printed no ref")?;
    let mnt = at("mnt");
    std::fs::create_dir_all(&mnt)?;
    strata_in("check-root", &["mount", top, &mnt])?;
    let built = std::fs::read_to_string(dir.join("mnt/built-by-strata"));
    strata_in("check-root", &["umount", &mnt])?;
    if built.ok().as_deref() != Some("hello\n") {
        bail!("the image build_step wrote lacks the file the step made");
    }
    strata_in("check-root", &["check"])?;
    eprintln!("examples: import_image and build_step ran; what build_step wrote imports whole");
    Ok(())
}
