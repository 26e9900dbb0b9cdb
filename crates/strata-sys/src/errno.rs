//! The error numbers callers of this crate tell apart (with
//! [`crate::SysError::errno`]): rustix's [`Errno`], whose constants
//! (`Errno::XDEV`, `Errno::NOTDIR`, ...) can be matched on.

pub use rustix::io::Errno;
