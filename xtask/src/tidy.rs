//! Tidy checks written as code: every Rust file says what it is for in a
//! leading `//!` comment (a generated one, where it comes from), and every
//! crate but strata-sys (and the test-only fault shim, an `LD_PRELOAD`
//! library) forbids `unsafe`.

use std::path::{Path, PathBuf};

use anyhow::bail;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

pub fn check() -> anyhow::Result<()> {
    let root = crate::workspace();
    let mut files = Vec::new();
    for dir in ["crates", "examples", "xtask", "fuzz"] {
        let d = root.join(dir);
        if d.is_dir() {
            rust_files(&d, &mut files)?;
        }
    }
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        // Generated files are included into a module that says what they
        // are; they say where they come from.
        if rel.contains("/generated/") {
            if !text.starts_with(crate::protos::HEADER) {
                problems.push(format!(
                    "{rel}: a generated file without the header `cargo xtask protos` writes"
                ));
            }
        } else if !text.trim_start().starts_with("//!") {
            problems.push(format!(
                "{rel}: does not start with a //! comment saying what it is for"
            ));
        }
        let is_crate_root = rel.ends_with("src/lib.rs") || rel.ends_with("src/main.rs");
        if is_crate_root
            && !rel.starts_with("crates/strata-sys/")
            && !rel.starts_with("crates/strata-fault-shim/")
            && !text.contains("#![forbid(unsafe_code)]")
        {
            problems.push(format!("{rel}: crate root lacks #![forbid(unsafe_code)]"));
        }
    }
    if !problems.is_empty() {
        bail!("tidy check failed:\n  {}", problems.join("\n  "));
    }
    eprintln!("tidy: ok ({} files)", files.len());
    Ok(())
}
