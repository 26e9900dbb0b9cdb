//! A fault-injecting `LD_PRELOAD` library for tests. It is never linked into
//! Strata: the fault tests start the real `strata` binary with it preloaded.
//! It interposes the C library's `read`, `pread64`, `readv`, `preadv`,
//! `preadv64`, `fsync`, `fdatasync`, `rename`, `renameat` and `renameat2`,
//! makes the calls its plan names fail with an errno, and hands every other
//! call to the C library unchanged.
//!
//! The plan is `$STRATA_FAULTS`: rules separated by `;`, each
//! `CALL:NEEDLE[:AFTER[:ERRNO]]`.
//! - `CALL` is `read` (all five read calls), `fsync` (`fsync` and
//!   `fdatasync`) or `rename` (all three rename calls).
//! - `NEEDLE` is a substring of the path the call acts on: the file behind
//!   the descriptor (as `/proc/self/fd` names it), or either name of a
//!   rename.
//! - `AFTER` is how many matching calls succeed before the failures start
//!   (default 0); every matching call after those fails.
//! - `ERRNO` is `EIO` (the default), `ENOSPC`, `EROFS`, `EDQUOT` or `EPERM`.
//!
//! Every failure it injects appends `CALL PATH ERRNO` as a line to
//! `$STRATA_FAULTS_LOG` when that is set, so a test can show that the fault
//! it planned really happened.
//!
//! What it cannot reach: calls Strata makes as raw system calls through
//! rustix (`openat2`, `syncfs`, `copy_file_range`, `getdents64`), and
//! anything the C library calls internally.

// Interposing C functions takes `unsafe`: exported unmangled symbols, raw
// pointers from the caller, `dlsym` and errno. Nothing here is part of
// Strata itself.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The families of calls a rule can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Read,
    Fsync,
    Rename,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Read => "read",
            Call::Fsync => "fsync",
            Call::Rename => "rename",
        }
    }
}

/// One rule of the plan.
#[derive(Debug)]
struct Rule {
    call: Call,
    needle: Vec<u8>,
    /// Matching calls still let through.
    pass: AtomicU64,
    errno: c_int,
    errno_name: &'static str,
}

fn parse(rule: &str) -> Rule {
    let bad = |why: &str| -> ! { panic!("STRATA_FAULTS: rule {rule:?}: {why}") };
    let mut parts = rule.split(':');
    let call = match parts.next() {
        Some("read") => Call::Read,
        Some("fsync") => Call::Fsync,
        Some("rename") => Call::Rename,
        _ => bad("the call must be read, fsync or rename"),
    };
    let needle = match parts.next() {
        Some(n) if !n.is_empty() => n.as_bytes().to_vec(),
        _ => bad("no path substring"),
    };
    let pass = match parts.next() {
        None | Some("") => 0,
        Some(n) => n.parse().unwrap_or_else(|_| bad("AFTER is not a number")),
    };
    let (errno, errno_name) = match parts.next().unwrap_or("EIO") {
        "EIO" => (libc::EIO, "EIO"),
        "ENOSPC" => (libc::ENOSPC, "ENOSPC"),
        "EROFS" => (libc::EROFS, "EROFS"),
        "EDQUOT" => (libc::EDQUOT, "EDQUOT"),
        "EPERM" => (libc::EPERM, "EPERM"),
        _ => bad("unknown ERRNO"),
    };
    if parts.next().is_some() {
        bad("too many fields");
    }
    Rule {
        call,
        needle,
        pass: AtomicU64::new(pass),
        errno,
        errno_name,
    }
}

/// The plan, read from the environment once.
fn plan() -> &'static [Rule] {
    static PLAN: OnceLock<Vec<Rule>> = OnceLock::new();
    PLAN.get_or_init(|| {
        // SAFETY: getenv returns null or a NUL-terminated string that stays
        // valid while nothing sets the variable; the test sets it before
        // the process starts.
        let raw = unsafe { libc::getenv(c"STRATA_FAULTS".as_ptr()) };
        if raw.is_null() {
            return Vec::new();
        }
        // SAFETY: non-null, NUL-terminated (above).
        let text = unsafe { CStr::from_ptr(raw) }.to_string_lossy();
        text.split(';')
            .filter(|r| !r.is_empty())
            .map(parse)
            .collect()
    })
}

/// The path `/proc/self/fd` gives for `fd`, if any.
fn fd_path(fd: c_int) -> Option<Vec<u8>> {
    let link = format!("/proc/self/fd/{fd}\0");
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `link` is NUL-terminated; `buf` is writable for its length.
    let n = unsafe { libc::readlink(link.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
    buf.truncate(n);
    Some(buf)
}

/// The path a `*at` call names: `name` itself when absolute or relative to
/// the working directory, else joined to the directory behind `dirfd`.
fn at_path(dirfd: c_int, name: *const c_char) -> Vec<u8> {
    if name.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller passes a NUL-terminated path, as the C call requires.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    if name.starts_with(b"/") || dirfd == libc::AT_FDCWD {
        return name.to_vec();
    }
    let mut path = fd_path(dirfd).unwrap_or_default();
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

/// The errno to fail a call of `call` on `paths` with, if the plan says so.
fn fault(call: Call, paths: &[&[u8]]) -> Option<c_int> {
    for rule in plan().iter().filter(|r| r.call == call) {
        let Some(path) = paths
            .iter()
            .find(|p| p.windows(rule.needle.len()).any(|w| w == rule.needle))
        else {
            continue;
        };
        let passed = rule
            .pass
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if passed {
            continue;
        }
        log(call, path, rule.errno_name);
        return Some(rule.errno);
    }
    None
}

/// The errno for a call on descriptor `fd`; the path is looked up only
/// when some rule could match.
fn fd_fault(call: Call, fd: c_int) -> Option<c_int> {
    if !plan().iter().any(|r| r.call == call) {
        return None;
    }
    let path = fd_path(fd)?;
    fault(call, &[&path])
}

/// Appends `CALL PATH ERRNO` to `$STRATA_FAULTS_LOG`.
fn log(call: Call, path: &[u8], errno: &str) {
    // SAFETY: as in `plan`.
    let file = unsafe { libc::getenv(c"STRATA_FAULTS_LOG".as_ptr()) };
    if file.is_null() {
        return;
    }
    let mut line = format!("{} ", call.name()).into_bytes();
    line.extend_from_slice(path);
    line.extend_from_slice(format!(" {errno}\n").as_bytes());
    // SAFETY: `file` is NUL-terminated; `line` is readable for its length;
    // the descriptor is closed once written.
    unsafe {
        let fd = libc::open(
            file,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        );
        if fd >= 0 {
            libc::write(fd, line.as_ptr().cast(), line.len());
            libc::close(fd);
        }
    }
}

/// Sets errno and returns the C failure value.
fn fail<T: From<i8>>(errno: c_int) -> T {
    // SAFETY: errno is thread-local; the location is always valid.
    unsafe { *libc::__errno_location() = errno };
    T::from(-1)
}

/// The C library's definition of `name`, found once.
macro_rules! next {
    ($name:literal as $ty:ty) => {{
        static NEXT: OnceLock<usize> = OnceLock::new();
        let addr = *NEXT.get_or_init(|| {
            // SAFETY: RTLD_NEXT with a NUL-terminated name.
            let f = unsafe { libc::dlsym(libc::RTLD_NEXT, concat!($name, "\0").as_ptr().cast()) };
            assert!(!f.is_null(), concat!("strata-fault-shim: no ", $name));
            f as usize
        });
        // SAFETY: the symbol the C library exports under this name has this
        // C signature.
        unsafe { std::mem::transmute::<usize, $ty>(addr) }
    }};
}

/// # Safety
/// As `read(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize {
    if let Some(e) = fd_fault(Call::Read, fd) {
        return fail(e);
    }
    let next = next!("read" as unsafe extern "C" fn(c_int, *mut c_void, usize) -> isize);
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(fd, buf, n) }
}

/// # Safety
/// As `pread(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, n: usize, off: i64) -> isize {
    if let Some(e) = fd_fault(Call::Read, fd) {
        return fail(e);
    }
    let next = next!("pread64" as unsafe extern "C" fn(c_int, *mut c_void, usize, i64) -> isize);
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(fd, buf, n, off) }
}

/// # Safety
/// As `readv(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize {
    if let Some(e) = fd_fault(Call::Read, fd) {
        return fail(e);
    }
    let next = next!("readv" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> isize);
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(fd, iov, cnt) }
}

/// # Safety
/// As `preadv(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: i64) -> isize {
    if let Some(e) = fd_fault(Call::Read, fd) {
        return fail(e);
    }
    let next =
        next!("preadv" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, i64) -> isize);
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(fd, iov, cnt, off) }
}

/// # Safety
/// As `preadv(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64(
    fd: c_int,
    iov: *const libc::iovec,
    cnt: c_int,
    off: i64,
) -> isize {
    if let Some(e) = fd_fault(Call::Read, fd) {
        return fail(e);
    }
    let next =
        next!("preadv64" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, i64) -> isize);
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(fd, iov, cnt, off) }
}

/// # Safety
/// As `fsync(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    if let Some(e) = fd_fault(Call::Fsync, fd) {
        return fail(e);
    }
    let next = next!("fsync" as unsafe extern "C" fn(c_int) -> c_int);
    // SAFETY: the caller's argument, passed on.
    unsafe { next(fd) }
}

/// # Safety
/// As `fdatasync(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    if let Some(e) = fd_fault(Call::Fsync, fd) {
        return fail(e);
    }
    let next = next!("fdatasync" as unsafe extern "C" fn(c_int) -> c_int);
    // SAFETY: the caller's argument, passed on.
    unsafe { next(fd) }
}

/// The errno for a rename between two `*at` names, if the plan fails it.
fn rename_fault(
    olddir: c_int,
    old: *const c_char,
    newdir: c_int,
    new: *const c_char,
) -> Option<c_int> {
    if !plan().iter().any(|r| r.call == Call::Rename) {
        return None;
    }
    fault(
        Call::Rename,
        &[&at_path(olddir, old), &at_path(newdir, new)],
    )
}

/// # Safety
/// As `rename(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    if let Some(e) = rename_fault(libc::AT_FDCWD, old, libc::AT_FDCWD, new) {
        return fail(e);
    }
    let next = next!("rename" as unsafe extern "C" fn(*const c_char, *const c_char) -> c_int);
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(old, new) }
}

/// # Safety
/// As `renameat(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat(
    olddir: c_int,
    old: *const c_char,
    newdir: c_int,
    new: *const c_char,
) -> c_int {
    if let Some(e) = rename_fault(olddir, old, newdir, new) {
        return fail(e);
    }
    let next = next!(
        "renameat" as unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int
    );
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(olddir, old, newdir, new) }
}

/// # Safety
/// As `renameat2(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat2(
    olddir: c_int,
    old: *const c_char,
    newdir: c_int,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    if let Some(e) = rename_fault(olddir, old, newdir, new) {
        return fail(e);
    }
    let next = next!(
        "renameat2"
            as unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int
    );
    // SAFETY: the caller's arguments, passed on.
    unsafe { next(olddir, old, newdir, new, flags) }
}
