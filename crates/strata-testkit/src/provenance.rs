//! Where a figure comes from: the commit the code was built from (and
//! whether the tree had uncommitted changes), when it was recorded, the
//! kernel, the file system the run wrote to, whether it ran as root and on
//! how many cores. `cargo xtask report` refuses a figure that lacks any of
//! these.
//!
//! std and serde_json only: xtask compiles this same file (with
//! `reliability.rs`) for the records it writes itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// The provenance of figures recorded now, by a run that wrote to `fs`.
pub fn here(fs: &Path) -> Value {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(repo).args(args);
        output(&mut cmd)
    };
    json!({
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty": !git(&["status", "--porcelain"]).is_empty(),
        "utc": output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        "kernel": output(Command::new("uname").arg("-r")),
        "fs": file_system(fs),
        "root": effective_uid() == 0,
        "cores": output(&mut Command::new("nproc")).parse::<u64>().expect("nproc prints a number"),
    })
}

/// This process's effective user: the owner the kernel gives its
/// `/proc/self`.
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid()
}

/// What `cmd` prints, trimmed; panics when it fails.
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The first line `TOOL --version` prints (`-V` where that is how the
/// tool answers), for a figure's `tool` field.
pub fn version(tool: &str) -> String {
    let flag = match tool {
        "pigz" | "zstd" => "-V",
        "openssl" | "go" => "version",
        _ => "--version",
    };
    let out = Command::new(tool)
        .arg(flag)
        .output()
        .unwrap_or_else(|e| panic!("run {tool} {flag}: {e}"));
    // pigz answers on stderr.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or(tool)
        // zstd frames its line in asterisks.
        .trim_matches(|c: char| c == '*' || c.is_whitespace())
        .to_owned()
}

/// `TYPE on SOURCE` for the mount holding `dir` (from /proc/self/mounts),
/// with the backing file and direct I/O of a loop device: "ext4 on
/// /dev/loop0 (a loop device over /x/bench-ext4.img, direct I/O on)",
/// "tmpfs on strata-bench".
pub fn file_system(dir: &Path) -> String {
    let dir = dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let (source, fstype) = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (source, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some((unescape(source), PathBuf::from(unescape(point)), fstype))
        })
        .filter(|(_, point, _)| dir.starts_with(point))
        // The last of the longest: the mount on top.
        .max_by_key(|(_, point, _)| point.as_os_str().len())
        .map(|(source, _, fstype)| (source, fstype.to_owned()))
        .expect("/ is mounted");
    let mut text = format!("{fstype} on {source}");
    if let Some(dev) = source.strip_prefix("/dev/loop") {
        let sys = Path::new("/sys/block").join(format!("loop{dev}/loop"));
        let read = |name: &str| {
            std::fs::read_to_string(sys.join(name))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let dio = if read("dio") == "1" { "on" } else { "off" };
        text += &format!(
            " (a loop device over {}, direct I/O {dio})",
            read("backing_file")
        );
    }
    text
}

/// A field of /proc/self/mounts with its octal escapes (`\040`) undone.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let p = here(dir.path());
        for key in ["commit", "utc", "kernel", "fs"] {
            assert!(!p[key].as_str().unwrap().is_empty(), "{key} in {p}");
        }
        assert!(p["dirty"].is_boolean() && p["root"].is_boolean(), "{p}");
        assert!(p["cores"].as_u64().unwrap() >= 1, "{p}");
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }
}
