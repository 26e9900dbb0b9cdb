//! The one reader of `/proc/self/mountinfo`: what is mounted where, and
//! which directories each mount keeps busy (a bind's source, an overlay's
//! layers). Everything that asks "is this mounted" or "is this directory in
//! use" asks here, so the escapes are undone in one place and an unreadable
//! table is an error, never "nothing is mounted".

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{SysError, SysResult};

/// One mount, as `/proc/self/mountinfo` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The directory of its file system that appears there: `/` for a
    /// whole file system, the source directory (within its file system)
    /// for a bind.
    pub root: PathBuf,
    /// The file-system type (`overlay`, `ext4`, ...).
    pub fs_type: String,
    /// The mount source (`overlay`, `/dev/vda`, ...).
    pub source: OsString,
    /// The file system's own options (an overlay's `lowerdir=` and the
    /// like), each unescaped.
    pub super_options: Vec<String>,
}

/// The mounts of this process's mount namespace; an unreadable table is an
/// error.
pub fn mounts() -> SysResult<Vec<MountEntry>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read(path).map_err(|e| SysError::io("read", path, e))?;
    parse(&text).map_err(|reason| SysError::Refused {
        op: "parse",
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the text of a mountinfo table.
pub fn parse(text: &[u8]) -> Result<Vec<MountEntry>, &'static str> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Result<MountEntry, &'static str> {
    // ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let dash = fields
        .iter()
        .position(|f| *f == b"-")
        .filter(|&d| d >= 6 && fields.len() >= d + 4)
        .ok_or("a line without its fields")?;
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    Ok(MountEntry {
        root: PathBuf::from(OsString::from_vec(unescape(fields[3]))),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        fs_type: text(fields[dash + 1]),
        source: OsString::from_vec(unescape(fields[dash + 2])),
        super_options: fields[dash + 3]
            .split(|b| *b == b',')
            .filter(|o| !o.is_empty())
            .map(text)
            .collect(),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let octal = s
            .get(i + 1..i + 4)
            .filter(|d| s[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
}

/// Where the legacy overlay path (kernels before 6.8) keeps the short-named
/// links to the lower directories of the overlay mounted on `target`, for
/// as long as it is mounted: the kernel lists those lowers by their short
/// relative names, and the links say what they are.
pub fn lower_links(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "mount".into(), |n| n.to_string_lossy().into_owned());
    target
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!(".{name}.lowers"))
}

impl MountEntry {
    /// The directories this mount keeps busy: where it is mounted (a mount
    /// inside a snapshot keeps that snapshot busy), and an overlay's layers
    /// (a lower named relatively, as the legacy path names them, resolved
    /// through its links beside the mount point) or the directory any other
    /// mount shows (a bind's source, within its file system).
    pub fn directories(&self) -> Vec<PathBuf> {
        let mut out = vec![self.mount_point.clone()];
        if self.fs_type != "overlay" {
            out.push(self.root.clone());
            return out;
        }
        for o in &self.super_options {
            let Some((key, value)) = o.split_once('=') else {
                continue;
            };
            let dirs: Vec<&str> = match key {
                "lowerdir" => value.split(':').filter(|d| !d.is_empty()).collect(),
                "lowerdir+" | "datadir+" | "upperdir" | "workdir" => vec![value],
                _ => continue,
            };
            for d in dirs {
                let d = Path::new(d);
                if d.is_absolute() {
                    out.push(d.to_path_buf());
                    continue;
                }
                let link = lower_links(&self.mount_point).join(d);
                match std::fs::read_link(&link) {
                    Ok(real) => out.push(real),
                    // Its links gone (a mount made before they were kept):
                    // the layers are unknown, so the mount point says
                    // where to look.
                    Err(e) => {
                        tracing::warn!(link = %link.display(), error = %e, "a relative lower directory without its link");
                        out.push(link);
                    }
                }
            }
        }
        out
    }
}

/// Every directory some mount keeps busy ([`MountEntry::directories`]).
pub fn directories_in_use() -> SysResult<Vec<PathBuf>> {
    Ok(mounts()?.iter().flat_map(MountEntry::directories).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        90 22 252:0 /r/snapshots/aa/fs /mnt/a\\040b rw,relatime shared:1 - ext4 /dev/vda rw\n\
        91 22 0:55 / /mnt/o rw,relatime - overlay overlay rw,lowerdir=/r/snapshots/bb/fs:/r/snapshots/cc/fs,upperdir=/r/snapshots/dd/fs,workdir=/r/snapshots/dd/work,userxattr\n\
        92 22 0:56 / /mnt/n rw - overlay overlay ro,lowerdir+=/r/snapshots/ee/fs,lowerdir+=/r/snapshots/ff/fs\n\
        93 22 0:5 / /r/snapshots/hh/fs/proc rw - proc proc rw\n";

    #[test]
    fn fields_are_read_and_unescaped() {
        let t = parse(TABLE).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[1].mount_point, Path::new("/mnt/a b"));
        assert_eq!(t[1].root, Path::new("/r/snapshots/aa/fs"));
        assert_eq!(t[2].fs_type, "overlay");
        assert_eq!(t[2].super_options.last().unwrap(), "userxattr");
        assert!(parse(b"1 2 3\n").is_err(), "a truncated line is refused");
        assert_eq!(unescape(b"/a\\040b\\134c"), b"/a b\\c");
        assert_eq!(unescape(b"/plain\\9"), b"/plain\\9");
    }

    #[test]
    fn overlay_layers_bind_sources_and_mount_points_are_in_use() {
        let dirs: Vec<PathBuf> = parse(TABLE)
            .unwrap()
            .iter()
            .flat_map(MountEntry::directories)
            .collect();
        for id in ["aa", "bb", "cc", "dd", "ee", "ff"] {
            let fs = PathBuf::from(format!("/r/snapshots/{id}/fs"));
            assert!(dirs.contains(&fs), "{id} in {dirs:?}");
        }
        // A mount inside a snapshot keeps that snapshot busy too.
        assert!(dirs.contains(&PathBuf::from("/r/snapshots/hh/fs/proc")));
    }

    #[test]
    fn relative_lowers_resolve_through_their_links() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m");
        let links = lower_links(&target);
        std::fs::create_dir(&links).unwrap();
        std::os::unix::fs::symlink("/r/snapshots/gg/fs", links.join("0")).unwrap();
        let entry = MountEntry {
            mount_point: target.clone(),
            root: "/".into(),
            fs_type: "overlay".into(),
            source: "overlay".into(),
            super_options: vec!["lowerdir=0:1".into()],
        };
        let dirs = entry.directories();
        assert_eq!(dirs[0], target, "where it is mounted");
        assert_eq!(dirs[1], Path::new("/r/snapshots/gg/fs"));
        assert_eq!(dirs[2], links.join("1"), "unresolved: the link's path");
    }
}
