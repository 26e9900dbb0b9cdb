//! Decoding a layer's compression (the vocabulary, [`Compression`], lives
//! in strata-core).

use std::io::{self, BufRead, Read};

pub use strata_core::Compression;

/// A decoder of `compression` over `input`.
pub(crate) fn decoder<'a, R: BufRead + 'a>(
    compression: Compression,
    input: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(input),
        Compression::Gzip | Compression::EStargz => {
            Box::new(flate2::bufread::MultiGzDecoder::new(input))
        }
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
    })
}
