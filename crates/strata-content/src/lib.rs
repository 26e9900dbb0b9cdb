//! The content store: verified blobs under `<root>/content/blobs/<alg>/<hex>`
//! with their rows in the metadata store, and resumable ingests under
//! `<root>/content/ingest/<id>/data`, with containerd's semantics.
//!
//! Crash rule: a blob file is renamed into `blobs/` (fsynced, directory
//! fsynced) before the transaction that adds its row commits; a delete drops
//! the row before unlinking the file. So a row always has its blob, and a
//! blob without a row (a commit or delete cut short) is removed when the store
//! opens. Only verified bytes ever reach `blobs/`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod collect;
mod error;
mod info;
mod reader;
mod store;
mod writer;

pub use error::ContentError;
pub use info::{Info, Status};
pub use reader::ReaderAt;
pub use store::{ContentStore, Ingested};
pub use writer::Writer;

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
