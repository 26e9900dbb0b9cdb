//! Lazy layers: an eStargz layer used before it is downloaded.
//!
//! A [`Layer`] is opened from any [`RangeSource`] of its blob (a registry,
//! through the command line's adapter; a file): two range reads fetch the
//! footer and the TOC, the TOC must have the digest the layer's descriptor
//! names, and the TOC becomes a [`Tree`]. [`mount`] serves that tree
//! read-only through FUSE, file reads answered by [`Readers`], a pool the
//! layers of a mount share; a file's data is read chunk by chunk, each
//! chunk fetched by one range read of the gzip member that starts with it,
//! checked against its digest in the TOC, and kept in a [`ChunkCache`]
//! shared by every layer. [`Prefetch`] fetches the rest in the background,
//! in blob order (prioritised files first), yielding the [`Link`] to reads:
//! it fetches only once no read has waited for a fetch for a while. A read that cannot be served
//! fails with EIO; nothing unchecked is ever served or cached.
//!
//! A layer that cannot be read lazily (plain gzip or zstd) is fetched
//! whole and unpacked once into the cache as an overlay lower directory
//! ([`Unpacked`]), so an image of both kinds mounts with the rest lazy.
//!
//! [`ImageMount`] puts it together for a whole image: its lazy layers
//! served, its other layers unpacked, all stacked on a directory by
//! overlay (read-only, or writable over an upper directory), prefetched
//! and pruned in the background.
//!
//! The tree is what overlay expects of a lower directory (whiteouts as
//! 0/0 character devices, opaque directories by attribute), so a lazy
//! layer stacks under others in an overlay mount.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod blobs;
mod cache;
mod fs;
mod image;
mod layer;
mod link;
mod prune;
mod remote;
mod tree;
mod unpack;
mod upper;

pub use blobs::{BlobCache, Filled};
pub use cache::ChunkCache;
pub use fs::{Mounted, Readers, mount};
pub use image::{Below, ImageLayer, ImageMount, ImageOptions, LayerReport, Totals, prune_cache};
pub use layer::{Layer, LayerOptions, Prefetch, Stats};
pub use link::Link;
pub use prune::{Prunable, Pruned, prune};
pub use remote::{FileSource, RangeSource, read_index};
pub use tree::{Chunk, Kind, MAX_CHUNK, Node, ROOT, Tree};
pub use unpack::{UnpackOptions, Unpacked};
