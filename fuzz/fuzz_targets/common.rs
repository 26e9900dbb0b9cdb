//! What the fuzz targets share (each is its own binary; this file is a
//! module of each, not a target).

use strata_diff::estargz::{EStargzOptions, EStargzWritten, write};
use strata_diff::{ApplyOptions, Limits};

/// Apply options with limits small enough for fuzzing: a layer of at most
/// 64 MiB and 10,000 entries, devices skipped.
pub fn options() -> ApplyOptions {
    ApplyOptions {
        name: "fuzz".into(),
        skip_devices: true,
        limits: Limits {
            max_uncompressed: 64 << 20,
            max_entries: 10_000,
            ..Limits::default()
        },
        ..ApplyOptions::default()
    }
}

/// The input read as a tar stream followed by four bytes of knobs, and
/// that tar written as eStargz (chunks of `smallest_chunk` bytes and up to
/// 16 KiB more, by the first knob): the tar,
/// the knobs, what the writer says and the blob. `None` when the input is
/// too short, gzip, or a tar the writer refuses. (The apply target has no
/// use for it.)
#[allow(dead_code)]
pub fn estargz_of(
    data: &[u8],
    smallest_chunk: u64,
) -> Option<(&[u8], &[u8], EStargzWritten, Vec<u8>)> {
    if data.len() < 5 {
        return None;
    }
    let (tar, knobs) = data.split_at(data.len() - 4);
    if tar.starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    let opts = EStargzOptions {
        chunk_size: smallest_chunk + u64::from(knobs[0]) * 64,
        ..EStargzOptions::default()
    };
    let (written, blob) = write(tar, Vec::new(), &opts, Some(1), 1).ok()?;
    Some((tar, knobs, written, blob))
}
