//! The error kinds shared by every crate. Each crate keeps its own error
//! enums (naming the key, digest or path concerned); they all classify into
//! one [`ErrorKind`] so callers and the CLI can react without matching on
//! every crate's variants.

use std::fmt;

/// What kind of failure an error is, independent of the crate raising it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The named object does not exist.
    NotFound,
    /// An object with that name already exists.
    AlreadyExists,
    /// The object is locked by another holder.
    Locked,
    /// The input is malformed, corrupt, hostile or does not match its digest.
    Invalid,
    /// The object is in a state that forbids the operation.
    FailedPrecondition,
    /// The resource is busy right now; retrying later may succeed.
    Unavailable,
    /// Anything else: I/O failures, corrupt internal state, bugs.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name, stable for JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::Locked => "locked",
            ErrorKind::Invalid => "invalid",
            ErrorKind::FailedPrecondition => "failed-precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every library error: which shared kind it is.
pub trait Classify {
    /// The shared kind of this error.
    fn kind(&self) -> ErrorKind;

    /// Shorthand for `self.kind() == ErrorKind::NotFound`.
    fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// Shorthand for `self.kind() == ErrorKind::AlreadyExists`.
    fn is_already_exists(&self) -> bool {
        self.kind() == ErrorKind::AlreadyExists
    }
}

impl Classify for std::io::Error {
    fn kind(&self) -> ErrorKind {
        match std::io::Error::kind(self) {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                ErrorKind::Invalid
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ResourceBusy => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Internal,
        }
    }
}
