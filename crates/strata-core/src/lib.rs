//! The vocabulary every Strata crate shares: content digests, descriptors,
//! mounts, random ids, labels, containerd-style filters and the error kinds
//! that every crate's errors classify into.
//!
//! This crate sits on floor 0: it performs no I/O beyond hashing what it is
//! handed, and it pulls in no async runtime and no syscall crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod descriptor;
pub mod digest;
pub mod error;
pub mod filter;
pub mod id;
pub mod labels;
pub mod media;
pub mod mount;

pub use descriptor::Descriptor;
pub use digest::{Algorithm, BackgroundDigester, Digest, DigestError, Digester, Verifier};
pub use error::{Classify, ErrorKind};
pub use filter::{Filter, FilterError, Filterable};
pub use labels::{LabelError, Labels};
pub use media::Compression;
pub use mount::{Mount, MountKind, OverlayLayers};

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
