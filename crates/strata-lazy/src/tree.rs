//! A layer's tree as its TOC describes it: one node per inode (hard links
//! share one), directories with their children by name, regular files
//! with the chunks that hold their data. Whiteouts take the form overlay
//! reads in a lower directory: `.wh.NAME` is a 0/0 character device named
//! NAME, `.wh..wh..opq` makes its directory opaque. The landmark and TOC
//! entries are the format's, not the layer's, and are left out.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_core::Digest;
use strata_diff::estargz::{Toc, TocEntry, is_format_entry};

/// The inode number of the root directory.
pub const ROOT: u64 = 1;

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory: its children by name, and its parent's inode.
    Dir {
        /// Children by name.
        children: BTreeMap<String, u64>,
        /// The parent directory (the root's is itself).
        parent: u64,
    },
    /// A regular file and the chunks that hold its data, in order.
    File(Vec<Chunk>),
    /// A symbolic link and its target.
    Symlink(String),
    /// A character device.
    Char,
    /// A whiteout: shown as overlay's 0/0 character device.
    Whiteout,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
}

/// One chunk of a regular file: where it sits in the file and in the
/// blob, and the digest its bytes must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk starts in the file.
    pub file_offset: u64,
    /// Its length.
    pub len: u64,
    /// Where the gzip member that starts with it starts in the blob.
    pub blob_offset: u64,
    /// The digest of its uncompressed bytes.
    pub digest: Digest,
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// A regular file's size (a symlink's target length).
    pub size: u64,
    /// Permission bits, setuid, setgid and sticky.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: SystemTime,
    /// A device's number (Linux's encoding of major and minor).
    pub rdev: u32,
    /// Names that lead to it (directories: 2 plus their subdirectories).
    pub nlink: u32,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Node {
    /// A node of `kind` with no size and the defaults a TOC entry's
    /// attributes then replace.
    fn new(kind: Kind) -> Node {
        Node {
            kind,
            size: 0,
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: UNIX_EPOCH,
            rdev: 0,
            nlink: 0,
            xattrs: BTreeMap::new(),
        }
    }

    fn dir(parent: u64) -> Node {
        Node::new(Kind::Dir {
            children: BTreeMap::new(),
            parent,
        })
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }
}

/// A layer's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Nodes by inode number minus one.
    nodes: Vec<Node>,
    /// The attribute that marks a directory opaque.
    opaque_xattr: String,
}

fn bad(entry: &str, reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("TOC entry {entry:?}: {reason}"),
    )
}

/// The components of a tar name, without `.` and empty ones; `..` is
/// refused (a TOC naming a path outside the layer is a hostile one).
/// The longest name a directory entry may have (Linux's `NAME_MAX`).
const NAME_MAX: usize = 255;

fn components(name: &str) -> io::Result<Vec<&str>> {
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad(name, "names a parent directory (..)")),
            c if c.len() > NAME_MAX => {
                return Err(bad(name, format!("has a name over {NAME_MAX} bytes")));
            }
            c if c.contains('\0') => return Err(bad(name, "has a NUL byte in a name")),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn parse_time(entry: &TocEntry) -> io::Result<SystemTime> {
    if entry.mod_time.is_empty() {
        return Ok(UNIX_EPOCH);
    }
    let t = time::OffsetDateTime::parse(
        &entry.mod_time,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| bad(&entry.name, format!("modtime {:?}: {e}", entry.mod_time)))?;
    let nanos = t.unix_timestamp_nanos();
    let since = Duration::from_nanos(u64::try_from(nanos.unsigned_abs()).unwrap_or(u64::MAX));
    Ok(if nanos >= 0 {
        UNIX_EPOCH + since
    } else {
        UNIX_EPOCH - since
    })
}

/// Linux's `new_encode_dev`: a device number as `stat` gives it; `None`
/// for one the kernel cannot hold (12 bits of major, 20 of minor), which
/// an eager import refuses too.
fn encode_dev(major: u32, minor: u32) -> Option<u32> {
    (major <= 0xfff && minor <= 0xf_ffff)
        .then_some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// Whether attribute `key` is one a layer never carries, as an eager
/// import drops it: every `trusted.*` one (overlay's opaque, redirect and
/// metacopy markers among them) and `user.overlay.*`.
fn is_dropped(key: &str) -> bool {
    key.starts_with("trusted.") || key.starts_with("user.overlay.")
}

/// The largest chunk read lazily (a chunk is held in memory whole while it
/// is checked); writers use 4 MiB.
pub const MAX_CHUNK: u64 = 64 << 20;

/// The chunk a `reg` or `chunk` entry describes (none for an empty file).
fn chunk_of(e: &TocEntry, file_size: u64) -> io::Result<Option<Chunk>> {
    let len = if e.chunk_size != 0 {
        e.chunk_size
    } else {
        file_size
            .checked_sub(e.chunk_offset)
            .ok_or_else(|| bad(&e.name, "a chunk starts past the end of its file"))?
    };
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_CHUNK {
        return Err(bad(
            &e.name,
            format!("a chunk of {len} bytes (more than {MAX_CHUNK}) cannot be read lazily"),
        ));
    }
    let digest = Digest::parse(&e.chunk_digest).map_err(|err| {
        bad(
            &e.name,
            format!(
                "chunk at {} has no usable chunkDigest ({err}); it cannot be read lazily",
                e.chunk_offset
            ),
        )
    })?;
    Ok(Some(Chunk {
        file_offset: e.chunk_offset,
        len,
        blob_offset: e.offset,
        digest,
    }))
}

impl Tree {
    /// The tree of `toc`. `opaque_xattr` is the attribute overlay reads
    /// to know a directory is opaque (`trusted.overlay.opaque`, or
    /// `user.overlay.opaque` for a `userxattr` overlay).
    pub fn from_toc(toc: &Toc, opaque_xattr: &str) -> io::Result<Tree> {
        let mut tree = Tree {
            nodes: vec![Node::dir(ROOT)],
            opaque_xattr: opaque_xattr.to_owned(),
        };
        // The regular file the next `chunk` entries continue, by name
        // (`None` for a format entry, whose chunks are skipped too).
        let mut open_file: Option<(String, Option<u64>)> = None;
        for e in &toc.entries {
            if e.kind == "chunk" {
                match &open_file {
                    Some((name, ino)) if *name == e.name => {
                        if let Some(ino) = *ino {
                            let size = tree.node(ino).size;
                            if let (Some(c), Kind::File(chunks)) =
                                (chunk_of(e, size)?, &mut tree.node_mut(ino).kind)
                            {
                                chunks.push(c);
                            }
                        }
                        continue;
                    }
                    _ => return Err(bad(&e.name, "a chunk that follows no part of its file")),
                }
            }
            open_file = None;
            let parts = components(&e.name)?;
            let Some((base, dirs)) = parts.split_last() else {
                // The root itself.
                if e.kind != "dir" {
                    return Err(bad(&e.name, "the root is not a directory"));
                }
                tree.set_attrs(ROOT, e)?;
                continue;
            };
            if is_format_entry(parts.join("/").as_bytes()) {
                open_file = (e.kind == "reg").then(|| (e.name.clone(), None));
                continue;
            }
            let parent = tree.make_dirs(dirs, &e.name)?;
            if *base == ".wh..wh..opq" {
                tree.node_mut(parent)
                    .xattrs
                    .insert(opaque_xattr.to_owned(), b"y".to_vec());
                continue;
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                if matches!(hidden, "" | "." | "..") {
                    return Err(bad(&e.name, "a whiteout of no plain name"));
                }
                let mut n = Node::new(Kind::Whiteout);
                n.perm = 0;
                n.mtime = parse_time(e)?;
                let ino = tree.push(n);
                tree.link(parent, hidden, ino);
                continue;
            }
            let ino = match e.kind.as_str() {
                "dir" => match tree.child(parent, base) {
                    Some(ino) if tree.node(ino).is_dir() => ino,
                    _ => tree.push(Node::dir(parent)),
                },
                "hardlink" => {
                    let target = tree.lookup(&components(&e.link_name)?).ok_or_else(|| {
                        bad(
                            &e.name,
                            format!("links to {:?}, which is not an earlier entry", e.link_name),
                        )
                    })?;
                    if tree.node(target).is_dir() {
                        return Err(bad(&e.name, "a hard link to a directory"));
                    }
                    tree.link(parent, base, target);
                    continue;
                }
                "reg" => {
                    let mut n = Node::new(Kind::File(chunk_of(e, e.size)?.into_iter().collect()));
                    n.size = e.size;
                    let ino = tree.push(n);
                    open_file = Some((e.name.clone(), Some(ino)));
                    ino
                }
                "symlink" => {
                    let mut n = Node::new(Kind::Symlink(e.link_name.clone()));
                    n.size = e.link_name.len() as u64;
                    tree.push(n)
                }
                "char" | "block" | "fifo" => {
                    let mut n = Node::new(match e.kind.as_str() {
                        "char" => Kind::Char,
                        "block" => Kind::Block,
                        _ => Kind::Fifo,
                    });
                    n.rdev = encode_dev(e.dev_major, e.dev_minor).ok_or_else(|| {
                        bad(
                            &e.name,
                            format!(
                                "device {}:{} is more than the kernel can hold",
                                e.dev_major, e.dev_minor
                            ),
                        )
                    })?;
                    tree.push(n)
                }
                other => return Err(bad(&e.name, format!("unknown entry type {other:?}"))),
            };
            tree.set_attrs(ino, e)?;
            tree.link(parent, base, ino);
        }
        tree.check_files()?;
        tree.count_links();
        Ok(tree)
    }

    /// Node `ino`; panics on a number this tree never gave out.
    pub fn node(&self, ino: u64) -> &Node {
        &self.nodes[usize::try_from(ino - 1).expect("inode number")]
    }

    /// Node `ino`, if there is one.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[usize::try_from(ino - 1).expect("inode number")]
    }

    /// How many inodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Every inode and its node.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Node)> {
        (1u64..).zip(&self.nodes)
    }

    fn push(&mut self, n: Node) -> u64 {
        self.nodes.push(n);
        self.nodes.len() as u64
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: u64, name: &str) -> Option<u64> {
        match &self.node(dir).kind {
            Kind::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    fn lookup(&self, parts: &[&str]) -> Option<u64> {
        parts.iter().try_fold(ROOT, |dir, p| self.child(dir, p))
    }

    /// Names `ino` as `name` in `dir` (whatever had that name goes).
    fn link(&mut self, dir: u64, name: &str, ino: u64) {
        if let Kind::Dir { children, .. } = &mut self.node_mut(dir).kind {
            children.insert(name.to_owned(), ino);
        }
        if let Kind::Dir { parent, .. } = &mut self.node_mut(ino).kind {
            *parent = dir;
        }
    }

    /// The directory `dirs` names, made (mode 0755, owned by root) where
    /// the TOC has no entry for it.
    fn make_dirs(&mut self, dirs: &[&str], entry: &str) -> io::Result<u64> {
        let mut at = ROOT;
        for d in dirs {
            at = match self.child(at, d) {
                Some(ino) if self.node(ino).is_dir() => ino,
                Some(_) => return Err(bad(entry, format!("{d:?} above it is not a directory"))),
                None => {
                    let ino = self.push(Node::dir(at));
                    self.link(at, d, ino);
                    ino
                }
            };
        }
        Ok(at)
    }

    fn set_attrs(&mut self, ino: u64, e: &TocEntry) -> io::Result<()> {
        let mtime = parse_time(e)?;
        // u32::MAX is no id (it means "unchanged" to chown).
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|&id| id != u32::MAX)
                .ok_or_else(|| bad(&e.name, format!("{what} {v} is out of range")))
        };
        let (uid, gid) = (id(e.uid, "uid")?, id(e.gid, "gid")?);
        let n = self.node_mut(ino);
        n.perm = (e.mode & 0o7777) as u16;
        n.uid = uid;
        n.gid = gid;
        n.mtime = mtime;
        let opaque = n.xattrs.remove_entry("trusted.overlay.opaque");
        let user_opaque = n.xattrs.remove_entry("user.overlay.opaque");
        n.xattrs = e
            .xattrs
            .iter()
            .filter(|(k, _)| !is_dropped(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // An opaque marker seen before the directory's own entry stays.
        n.xattrs.extend(opaque.into_iter().chain(user_opaque));
        Ok(())
    }

    /// Every regular file's chunks cover it exactly, in order.
    fn check_files(&self) -> io::Result<()> {
        for (_, n) in self.iter() {
            if let Kind::File(chunks) = &n.kind {
                let mut at = 0u64;
                for c in chunks {
                    if c.file_offset != at {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "a file's chunks leave a gap or overlap at {at} (a chunk at {})",
                                c.file_offset
                            ),
                        ));
                    }
                    at = at.checked_add(c.len).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "chunk sizes overflow")
                    })?;
                }
                if at != n.size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a file of {} bytes has chunks for {at}", n.size),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `parts` (a path's components) names an entry.
    pub fn has(&self, parts: &[&str]) -> bool {
        self.lookup(parts).is_some()
    }

    /// Whether the root is opaque: the layer hides every layer below it.
    pub fn root_is_opaque(&self) -> bool {
        self.node(ROOT).xattrs.contains_key(&self.opaque_xattr)
    }

    /// Leaves out the whiteouts that hide nothing, as an eager import
    /// never makes them: those in an opaque directory (it hides what is
    /// below anyway) and those whose path no layer below has (`below`
    /// answers for a path's components). Overlay lists a whiteout in a
    /// directory no lower layer has, so one left in would show.
    pub fn prune_whiteouts(&mut self, below: impl Fn(&[&str]) -> bool) {
        let mut stack = vec![(ROOT, Vec::<String>::new())];
        while let Some((dir, path)) = stack.pop() {
            let opaque = self.node(dir).xattrs.contains_key(&self.opaque_xattr);
            let Kind::Dir { children, .. } = &self.node(dir).kind else {
                continue;
            };
            let mut gone = Vec::new();
            for (name, &ino) in children {
                let mut at = path.clone();
                at.push(name.clone());
                match self.node(ino).kind {
                    Kind::Whiteout => {
                        let parts: Vec<&str> = at.iter().map(String::as_str).collect();
                        if opaque || !below(&parts) {
                            gone.push(name.clone());
                        }
                    }
                    Kind::Dir { .. } => stack.push((ino, at)),
                    _ => {}
                }
            }
            if let Kind::Dir { children, .. } = &mut self.node_mut(dir).kind {
                for name in gone {
                    children.remove(&name);
                }
            }
        }
        self.count_links();
    }

    /// Link counts of what is reachable from the root.
    fn count_links(&mut self) {
        for n in &mut self.nodes {
            n.nlink = 0;
        }
        let mut stack = vec![ROOT];
        self.node_mut(ROOT).nlink = 2;
        while let Some(dir) = stack.pop() {
            let Kind::Dir { children, .. } = &self.node(dir).kind else {
                continue;
            };
            let children: Vec<u64> = children.values().copied().collect();
            for ino in children {
                if self.node(ino).is_dir() {
                    self.node_mut(ino).nlink = 2;
                    self.node_mut(dir).nlink += 1;
                    stack.push(ino);
                } else {
                    self.node_mut(ino).nlink += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: &str) -> TocEntry {
        TocEntry {
            name: name.into(),
            kind: kind.into(),
            mode: 0o644,
            ..TocEntry::default()
        }
    }

    fn toc(entries: Vec<TocEntry>) -> Toc {
        Toc {
            version: 1,
            entries,
        }
    }

    fn digest(s: &str) -> String {
        Digest::of_bytes(strata_core::Algorithm::Sha256, s.as_bytes()).to_string()
    }

    #[test]
    fn whiteouts_take_overlays_form_and_format_entries_are_hidden() {
        let mut f = entry("./etc/passwd", "reg");
        f.size = 4;
        f.chunk_digest = digest("root");
        let mut landmark = entry(".prefetch.landmark", "reg");
        landmark.size = 1;
        landmark.chunk_digest = digest("x");
        let t = Tree::from_toc(
            &toc(vec![
                landmark,
                entry("etc/", "dir"),
                f,
                entry("etc/.wh.shadow", "reg"),
                entry("usr/share/.wh..wh..opq", "reg"),
                entry("etc/passwd-", "hardlink"),
            ]),
            "trusted.overlay.opaque",
        )
        .map_err(|e| e.to_string());
        // The hard link names no target: refused, by name.
        assert!(t.unwrap_err().contains("etc/passwd-"));

        let mut f = entry("./etc/passwd", "reg");
        f.size = 4;
        f.chunk_digest = digest("root");
        let mut link = entry("etc/passwd-", "hardlink");
        link.link_name = "etc/passwd".into();
        let t = Tree::from_toc(
            &toc(vec![
                entry("etc/", "dir"),
                f,
                link,
                entry("etc/.wh.shadow", "reg"),
                entry("usr/share/.wh..wh..opq", "reg"),
                entry(".no.prefetch.landmark", "reg"),
            ]),
            "trusted.overlay.opaque",
        )
        .unwrap();
        let etc = t.child(ROOT, "etc").unwrap();
        let shadow = t.node(t.child(etc, "shadow").unwrap());
        assert_eq!((&shadow.kind, shadow.rdev), (&Kind::Whiteout, 0));
        let share = t.child(t.child(ROOT, "usr").unwrap(), "share").unwrap();
        assert_eq!(t.node(share).xattrs["trusted.overlay.opaque"], b"y");
        assert!(t.child(share, ".wh..wh..opq").is_none());
        assert!(t.child(ROOT, ".no.prefetch.landmark").is_none());
        let passwd = t.child(etc, "passwd").unwrap();
        assert_eq!(t.child(etc, "passwd-"), Some(passwd));
        assert_eq!(t.node(passwd).nlink, 2);
        // root, etc, usr, share: etc and usr count in the root's links.
        assert_eq!(t.node(ROOT).nlink, 4);

        // A whiteout stays only where a layer below has its path.
        let mut pruned = t.clone();
        pruned.prune_whiteouts(|p| p == ["etc", "shadow"]);
        assert!(pruned.child(etc, "shadow").is_some());
        pruned.prune_whiteouts(|_| false);
        assert!(pruned.child(etc, "shadow").is_none());
        assert!(pruned.child(etc, "passwd").is_some());
    }

    #[test]
    fn hostile_tocs_are_refused_by_name() {
        let mut gap = entry("f", "reg");
        gap.size = 10;
        gap.chunk_size = 4;
        gap.chunk_digest = digest("a");
        let mut next = entry("f", "chunk");
        next.chunk_offset = 5;
        next.chunk_digest = digest("b");
        let mut no_digest = entry("g", "reg");
        no_digest.size = 3;
        let mut orphan = entry("h", "chunk");
        orphan.chunk_digest = digest("c");
        let mut device = entry("sda", "block");
        device.dev_major = 0x1008;
        let mut owner = entry("f", "reg");
        owner.uid = u64::from(u32::MAX);
        let mut later = entry("link", "hardlink");
        later.link_name = "target".into();
        let target = entry("target", "reg");
        let mut huge = entry("big", "reg");
        huge.size = u64::MAX;
        huge.chunk_digest = digest("big");
        let mut overlay = entry("d", "dir");
        for (k, v) in [
            ("trusted.overlay.redirect", &b"/x"[..]),
            ("trusted.other", b"v"),
            ("user.overlay.opaque", b"y"),
        ] {
            overlay.xattrs.insert(k.into(), v.to_vec());
        }
        overlay
            .xattrs
            .insert("security.capability".into(), b"cap".to_vec());
        for (entries, says) in [
            (vec![entry("../escape", "reg")], "parent directory"),
            (vec![gap, next], "gap"),
            (vec![no_digest], "chunkDigest"),
            (vec![orphan], "follows no part"),
            (
                vec![entry("a", "reg"), entry("a/b", "reg")],
                "not a directory",
            ),
            (vec![entry("x", "socket")], "unknown entry type"),
            (vec![huge], "cannot be read lazily"),
            (vec![entry("d/.wh.", "reg")], "no plain name"),
            (vec![entry(".wh..", "reg")], "no plain name"),
            (vec![entry(&"n".repeat(256), "reg")], "over 255 bytes"),
            (vec![entry("a\0b", "reg")], "NUL"),
            (vec![device], "kernel can hold"),
            (vec![owner], "out of range"),
            (vec![later, target], "not an earlier entry"),
        ] {
            let err = Tree::from_toc(&toc(entries), "trusted.overlay.opaque").unwrap_err();
            assert!(err.to_string().contains(says), "{err} (wanted {says:?})");
        }
        // Attributes an eager import drops never come from a layer here.
        let t = Tree::from_toc(&toc(vec![overlay]), "trusted.overlay.opaque").unwrap();
        let kept: Vec<&String> = t.node(t.child(ROOT, "d").unwrap()).xattrs.keys().collect();
        assert_eq!(kept, ["security.capability"]);
    }
}
