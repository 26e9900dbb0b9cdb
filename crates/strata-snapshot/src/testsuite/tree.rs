//! Renders a directory tree as a stable listing, one line per entry (path,
//! type, mode, owner, size, content hash, link target, device, xattrs,
//! modification time, hard-link group), so a case compares a mounted
//! snapshot with a reference directory in one assertion and a readable
//! diff. Strata's own tests use it too (through its testkit).
//!
//! Every non-directory carries `mtime=SECONDS` (whole seconds: tar headers
//! keep no more) and, when it shares its inode with other entries of the
//! same tree, `link=/FIRST` naming the first path of that inode, so broken
//! or invented hard links and lost times show. Any read error (stat,
//! content, xattr list or value) fails the render instead of hiding.

use std::collections::HashMap;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_core::{Algorithm, Digester};
use strata_sys::{FileKind, Root};

/// An inode: (device, inode number).
type Inode = (u64, u64);

/// The listing of `dir` (as `/`) and everything below it, sorted by path.
pub fn render(dir: &Path) -> String {
    let root = Root::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let mut stack = vec![PathBuf::new()];
    // (path, line without the link group, inode of a non-directory)
    let mut entries: Vec<(String, String, Option<Inode>)> = Vec::new();
    while let Some(rel) = stack.pop() {
        // Names that are not UTF-8 show escaped, so two never look alike.
        let bytes = rel.as_os_str().as_bytes();
        let shown = std::str::from_utf8(bytes)
            .map_or_else(|_| bytes.escape_ascii().to_string(), str::to_owned);
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
            panic!("{what} /{shown} under {}: {e}", dir.display())
        };
        let md = root.stat(&rel).unwrap_or_else(|e| fail("stat", &e));
        let mut line = format!(
            "/{shown} {:?} {:04o} {}:{}",
            md.kind, md.mode, md.uid, md.gid
        );
        match md.kind {
            FileKind::File => {
                let mut d = Digester::new(Algorithm::Sha256);
                let mut f = root.open_file(&rel).unwrap_or_else(|e| fail("open", &e));
                std::io::copy(&mut f, &mut d).unwrap_or_else(|e| fail("read", &e));
                write!(line, " size={} {}", md.size, d.finish()).expect("format");
            }
            FileKind::Symlink => {
                let t = root
                    .read_link(&rel)
                    .unwrap_or_else(|e| fail("readlink", &e));
                write!(line, " -> {}", String::from_utf8_lossy(t.as_bytes())).expect("format");
            }
            FileKind::CharDevice | FileKind::BlockDevice => {
                write!(line, " rdev={}", md.rdev).expect("format")
            }
            _ => {}
        }
        let mut xattrs = root
            .list_xattrs(&rel)
            .unwrap_or_else(|e| fail("list xattrs of", &e));
        xattrs.sort();
        for name in xattrs {
            let value = root
                .get_xattr(&rel, &name)
                .unwrap_or_else(|e| fail(&format!("read xattr {name:?} of"), &e))
                .unwrap_or_else(|| fail(&format!("xattr {name:?} vanished from"), &"listed"));
            write!(
                line,
                " {}={}",
                name.to_string_lossy(),
                String::from_utf8_lossy(&value)
            )
            .expect("format");
        }
        let inode = if md.kind == FileKind::Dir {
            for (name, _) in root.read_dir(&rel).unwrap_or_else(|e| fail("read dir", &e)) {
                stack.push(rel.join(name));
            }
            None
        } else {
            write!(line, " mtime={}", md.mtime.sec).expect("format");
            Some((md.dev, md.ino))
        };
        entries.push((format!("/{shown}"), line, inode));
    }
    entries.sort();
    // The first path (in listing order) of every inode met more than once.
    let mut first: HashMap<Inode, (&str, usize)> = HashMap::new();
    for (path, _, inode) in &entries {
        if let Some(i) = inode {
            first.entry(*i).or_insert((path.as_str(), 0)).1 += 1;
        }
    }
    let mut out = String::new();
    for (_, line, inode) in &entries {
        out.push_str(line);
        if let Some((head, _)) = inode.and_then(|i| first.get(&i)).filter(|(_, n)| *n > 1) {
            write!(out, " link={head}").expect("format");
        }
        out.push('\n');
    }
    out
}
