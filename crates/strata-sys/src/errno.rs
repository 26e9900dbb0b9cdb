//! The error numbers callers of this crate tell apart (with
//! [`crate::SysError::raw_os_error`]), by name.

pub use libc::{EEXIST, EMLINK, ENOENT, ENOTDIR, EOPNOTSUPP, EPERM, EXDEV};
