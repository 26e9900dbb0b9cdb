//! The FUSE file system of one lazy layer: read-only, metadata from the
//! tree, file data through [`Layer::read`]. A read that cannot be served
//! (the registry gone, a chunk that does not match its digest) fails with
//! EIO and is logged; no byte that was not checked is ever returned.
//!
//! Metadata is answered on the session's own threads, from memory; file
//! reads, which may wait on the network, are handed to [`Readers`], a
//! pool every layer of a mount shares. So a stalled fetch never holds up
//! a lookup, and no more chunks are fetched and decoded at once than the
//! pool has threads, however many layers and readers there are.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request, SessionACL,
};

use crate::layer::Layer;
use crate::tree::{Kind, Node};

/// Nothing in a layer changes: the kernel may keep what it was told.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// The threads that answer file reads for every layer of a mount.
pub struct Readers {
    jobs: mpsc::Sender<Job>,
    threads: usize,
}

type Job = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Readers {
    /// Starts `threads` reader threads (at least one). They end once the
    /// pool is dropped and the reads queued before have been answered.
    pub fn new(threads: usize) -> io::Result<Arc<Readers>> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("lazy-read-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            // A read that panics loses its reply (the
                            // reader gets EIO), never the thread.
                            Ok(job) => {
                                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                                    .is_err()
                                {
                                    tracing::error!("a lazy read panicked; the reader gets EIO");
                                }
                            }
                            Err(_) => break,
                        }
                    }
                })?;
        }
        Ok(Arc::new(Readers { jobs: tx, threads }))
    }

    /// Queues `job`; it runs on the calling thread if the pool is gone.
    fn run(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            job();
        }
    }
}

struct LazyFs {
    layer: Arc<Layer>,
    readers: Arc<Readers>,
    /// What `statfs` reports: the 4 KiB blocks the files take, counted
    /// once (the tree never changes).
    blocks: u64,
}

fn file_type(n: &Node) -> FileType {
    match n.kind {
        Kind::Dir { .. } => FileType::Directory,
        Kind::File(_) => FileType::RegularFile,
        Kind::Symlink(_) => FileType::Symlink,
        Kind::Char | Kind::Whiteout => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: n.size,
        blocks: n.size.div_ceil(512),
        atime: n.mtime,
        mtime: n.mtime,
        ctime: n.mtime,
        crtime: UNIX_EPOCH,
        kind: file_type(n),
        perm: n.perm,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: n.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// The value of an attribute for a reply that asked for `size` bytes.
fn reply_bytes(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    } else if bytes.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

impl LazyFs {
    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.layer.tree().get(ino.0)
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.layer.tree();
        if self.node(parent).is_none() {
            return reply.error(Errno::ENOENT);
        }
        match name.to_str().and_then(|n| tree.child(parent.0, n)) {
            Some(ino) => reply.entry(&TTL, &attr(ino, tree.node(ino)), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(n) => reply.attr(&TTL, &attr(ino.0, n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|n| &n.kind) {
            Some(Kind::Symlink(target)) => reply.data(target.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino).map(|n| &n.kind) {
            // The data never changes: the page cache may keep it across
            // opens.
            Some(Kind::File(_)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Some(Kind::Dir { .. }) => reply.error(Errno::EISDIR),
            Some(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Nothing is ever written, so there is nothing to flush.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let layer = self.layer.clone();
        self.readers.run(Box::new(move || {
            match layer.read(ino.0, offset, u64::from(size)) {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => {
                    tracing::error!(layer = %layer.name(), inode = ino.0, offset, size, error = %e, "a lazy read failed; the reader gets EIO");
                    reply.error(Errno::EIO);
                }
            }
        }));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.layer.tree();
        let Some(Kind::Dir { children, parent }) = self.node(ino).map(|n| &n.kind) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(ino.0, "."), (*parent, "..")];
        let entries = dots
            .into_iter()
            .map(|(i, name)| (i, FileType::Directory, name))
            .chain(
                children
                    .iter()
                    .map(|(name, &i)| (i, file_type(tree.node(i)), name.as_str())),
            );
        for (n, (i, kind, name)) in entries
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(i), n as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.layer.tree().len() as u64;
        reply.statfs(self.blocks, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match name.to_str().and_then(|k| n.xattrs.get(k)) {
            Some(v) => reply_bytes(reply, size, v),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for k in n.xattrs.keys() {
            names.extend_from_slice(k.as_bytes());
            names.push(0);
        }
        reply_bytes(reply, size, &names);
    }
}

/// A mounted lazy layer; unmounted when dropped.
#[derive(Debug)]
pub struct Mounted {
    session: Option<BackgroundSession>,
    target: PathBuf,
}

impl Mounted {
    /// Where it is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts it and waits for its threads.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }

    /// Unmounts it, or, when the unmount is refused as busy, detaches it:
    /// gone from the mount table, it serves what still uses it (a mount
    /// stacked on it) for as long as this process lives, then reads get
    /// ENOTCONN. True when it was unmounted.
    pub fn unmount_or_detach(self) -> io::Result<bool> {
        let target = self.target.clone();
        match self.unmount() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                strata_sys::mount::detach(&target).map_err(io::Error::other)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            tracing::warn!(target = %self.target.display(), error = %e, "could not unmount a lazy layer");
        }
    }
}

/// Mounts `layer` read-only at `target` (an existing directory), its file
/// reads answered by `readers`. Any user may read it, as the tree's modes
/// allow (the kernel checks them); set-user-ID bits and devices work as in
/// an ordinary lower directory.
pub fn mount(layer: Arc<Layer>, target: &Path, readers: Arc<Readers>) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        // The mount table's source field: the layer's name without its
        // blanks ("1 (sha256:...)" shows as "strata-lazy:1(sha256:...)"),
        // so tools that split that table on blanks see one word.
        MountOption::FSName(format!(
            "strata-lazy:{}",
            layer.name().replace(char::is_whitespace, "")
        )),
        MountOption::Subtype("strata-lazy".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::NoAtime,
    ];
    config.acl = SessionACL::All;
    // Metadata comes from memory; reads go to the pool.
    config.n_threads = Some(2);
    let blocks = layer
        .tree()
        .iter()
        .map(|(_, n)| n.size.div_ceil(4096))
        .sum();
    let fs = LazyFs {
        layer,
        readers,
        blocks,
    };
    let session = fuser::spawn_mount(fs, target, &config)?;
    Ok(Mounted {
        session: Some(session),
        target: target.to_path_buf(),
    })
}
