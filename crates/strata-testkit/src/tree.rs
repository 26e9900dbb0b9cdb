//! Renders a directory tree as a stable listing, one line per entry (path,
//! type, mode, owner, size, content hash, link target, device, xattrs), so
//! tests compare whole trees with one assertion and a readable diff.

use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_core::{Algorithm, Digester};
use strata_sys::{FileKind, Root};

/// The listing of `dir` (as `/`) and everything below it, sorted by path.
pub fn render(dir: &Path) -> String {
    let root = Root::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let mut out = String::new();
    let mut stack = vec![PathBuf::new()];
    let mut lines = Vec::new();
    while let Some(rel) = stack.pop() {
        let md = root
            .stat(&rel)
            .unwrap_or_else(|e| panic!("stat {}: {e}", rel.display()));
        let mut line = format!(
            "/{} {:?} {:04o} {}:{}",
            String::from_utf8_lossy(rel.as_os_str().as_bytes()),
            md.kind,
            md.mode,
            md.uid,
            md.gid
        );
        match md.kind {
            FileKind::File => {
                let mut d = Digester::new(Algorithm::Sha256);
                let mut f = root.open_file(&rel).expect("open file");
                std::io::copy(&mut f, &mut d).expect("read file");
                write!(line, " size={} {}", md.size, d.finish()).expect("format");
            }
            FileKind::Symlink => {
                let t = root.read_link(&rel).expect("readlink");
                write!(line, " -> {}", String::from_utf8_lossy(t.as_bytes())).expect("format");
            }
            FileKind::CharDevice | FileKind::BlockDevice => {
                write!(line, " rdev={}", md.rdev).expect("format")
            }
            _ => {}
        }
        let mut xattrs = root.list_xattrs(&rel).unwrap_or_default();
        xattrs.sort();
        for name in xattrs {
            let value = root
                .get_xattr(&rel, &name)
                .ok()
                .flatten()
                .unwrap_or_default();
            write!(
                line,
                " {}={}",
                name.to_string_lossy(),
                String::from_utf8_lossy(&value)
            )
            .expect("format");
        }
        lines.push(line);
        if md.kind == FileKind::Dir {
            for (name, _) in root.read_dir(&rel).expect("read dir") {
                stack.push(rel.join(name));
            }
        }
    }
    lines.sort();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}
