//! The data plane. Today: [`apply`], the streaming, verifying, hostile-safe
//! application of an OCI layer (tar, tar+gzip, tar+zstd) onto a directory.
//! Change walking, the layer writer and the merge engine follow (issue 5).
#![forbid(unsafe_code)]

mod apply;
mod compression;
mod error;

pub use apply::{Applied, ApplyOptions, Limits, apply};
pub use compression::Compression;
pub use error::ApplyError;
