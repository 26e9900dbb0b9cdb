//! Content digests as the OCI image spec writes them (`algorithm:encoded`),
//! and streaming hashers that compute or verify them.
//!
//! Parsing follows the OCI grammar first and then the rules of the registered
//! algorithms: a supported algorithm's encoded part must be lowercase hex of
//! exactly the algorithm's length. A digest that passed parsing is safe to use
//! as a path component (`<alg>/<hex>`), which the content store relies on.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// The hash algorithms Strata computes and accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the OCI default.
    Sha256,
    /// SHA-512.
    Sha512,
    /// BLAKE3 with a 256-bit output.
    Blake3,
}

impl Algorithm {
    /// Every supported algorithm, in a stable order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Blake3];

    /// The name used before the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// Length of the lowercase hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 | Algorithm::Blake3 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::from_name(s).ok_or_else(|| DigestError::Unsupported {
            algorithm: s.to_owned(),
        })
    }
}

/// Why a string is not a digest Strata accepts, or why content did not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// The string has no `algorithm:encoded` shape.
    #[error("invalid digest {input:?}: {reason}")]
    Format {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The algorithm is well formed but not one Strata supports.
    #[error("unsupported digest algorithm {algorithm:?}")]
    Unsupported {
        /// The algorithm part of the string (before the `:`).
        algorithm: String,
    },
    /// Content hashed to a different digest than the one expected.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The digest the content was expected to have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
}

impl crate::Classify for DigestError {
    fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::Invalid
    }
}

/// A validated content digest such as `sha256:e3b0…b855`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    repr: String,
}

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(input: &str) -> Result<Self, DigestError> {
        let format = |reason| DigestError::Format {
            input: truncate_for_error(input),
            reason,
        };
        let (alg, encoded) = input
            .split_once(':')
            .ok_or_else(|| format("missing ':' separator"))?;
        if !valid_algorithm_grammar(alg) {
            return Err(format(
                "algorithm must be lowercase components separated by one of +._-",
            ));
        }
        if encoded.is_empty()
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
        {
            return Err(format("encoded part must be non-empty [a-zA-Z0-9=_-]"));
        }
        let algorithm = Algorithm::from_name(alg).ok_or_else(|| DigestError::Unsupported {
            algorithm: alg.to_owned(),
        })?;
        if encoded.len() != algorithm.hex_len() {
            return Err(format(match algorithm {
                Algorithm::Sha512 => "sha512 needs 128 hex characters",
                Algorithm::Sha256 | Algorithm::Blake3 => "this algorithm needs 64 hex characters",
            }));
        }
        if !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(format("encoded part must be lowercase hex"));
        }
        Ok(Digest {
            algorithm,
            repr: input.to_owned(),
        })
    }

    /// Digest of a byte slice.
    pub fn of_bytes(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut d = Digester::new(algorithm);
        d.update(bytes);
        d.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part after the colon.
    pub fn hex(&self) -> &str {
        &self.repr[self.algorithm.as_str().len() + 1..]
    }

    /// The whole `algorithm:hex` string.
    pub fn as_str(&self) -> &str {
        &self.repr
    }

    fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Self {
        let mut repr = String::with_capacity(algorithm.as_str().len() + 1 + raw.len() * 2);
        repr.push_str(algorithm.as_str());
        repr.push(':');
        for b in raw {
            repr.push(char::from(HEX[usize::from(b >> 4)]));
            repr.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Digest { algorithm, repr }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn valid_algorithm_grammar(alg: &str) -> bool {
    // algorithm := component (separator component)*, component := [a-z0-9]+
    !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|component| {
            !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn truncate_for_error(input: &str) -> String {
    const MAX: usize = 200;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.repr)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.repr
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.repr)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone)]
enum State {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Blake3(Box<blake3::Hasher>),
}

/// A streaming hasher. Feed it with [`Digester::update`] or through
/// `io::Write`; [`Digester::current`] reads the digest so far without ending
/// the stream.
#[derive(Clone)]
pub struct Digester {
    state: State,
    written: u64,
}

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digester")
            .field("algorithm", &self.algorithm())
            .field("written", &self.written)
            .finish()
    }
}

impl Digester {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
        };
        Digester { state, written: 0 }
    }

    /// The algorithm being computed.
    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
            State::Blake3(_) => Algorithm::Blake3,
        }
    }

    /// Bytes hashed so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Hashes more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
            State::Blake3(h) => {
                h.update(bytes);
            }
        }
        self.written += bytes.len() as u64;
    }

    /// The digest of everything hashed so far; hashing may continue.
    pub fn current(&self) -> Digest {
        self.clone().finish()
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Digest {
        match self.state {
            State::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.finalize()),
            State::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.finalize()),
            State::Blake3(h) => Digest::from_raw(Algorithm::Blake3, h.finalize().as_bytes()),
        }
    }
}

impl io::Write for Digester {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Job {
    /// Hash the first `usize` bytes of the buffer.
    Data(Vec<u8>, usize),
    Peek(std::sync::mpsc::SyncSender<Digest>),
}

/// A [`Digester`] running on its own thread, so hashing overlaps with the
/// caller's I/O (writing a blob while hashing it takes the longer of the two,
/// not their sum). Small updates are batched before they cross threads.
///
/// Buffers cross threads by ownership: [`BackgroundDigester::update_owned`]
/// hands over a chunk without copying it, and the thread hands each buffer
/// back once hashed, whole, for [`BackgroundDigester::buffer`] to reuse, so
/// a stream of chunks circulates a few allocations instead of making one per
/// chunk, and refilling one writes no zeros first.
pub struct BackgroundDigester {
    algorithm: Algorithm,
    pending: Vec<u8>,
    written: u64,
    tx: Option<std::sync::mpsc::SyncSender<Job>>,
    /// Buffers the thread has finished hashing.
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
    handle: Option<std::thread::JoinHandle<Digester>>,
}

impl fmt::Debug for BackgroundDigester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundDigester")
            .field("algorithm", &self.algorithm)
            .field("written", &self.written)
            .finish()
    }
}

/// Updates smaller than this are gathered before being sent to the thread.
const BATCH: usize = 256 * 1024;

impl BackgroundDigester {
    /// Starts a hashing thread for `algorithm`.
    ///
    /// # Panics
    /// Panics if the OS cannot start a thread.
    pub fn new(algorithm: Algorithm) -> Self {
        // Eight batches in flight bound the memory held for hashing; as
        // many spent buffers wait for reuse, more are freed.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(8);
        let (give_back, spent) = std::sync::mpsc::sync_channel(8);
        let handle = std::thread::Builder::new()
            .name("strata-digest".into())
            .spawn(move || {
                let mut d = Digester::new(algorithm);
                for job in rx {
                    match job {
                        Job::Data(bytes, len) => {
                            d.update(&bytes[..len]);
                            // With enough spares waiting, or nobody left to
                            // reuse it, the buffer is freed here.
                            let _ = give_back.try_send(bytes);
                        }
                        Job::Peek(reply) => {
                            // The asker may have gone away; nothing to do then.
                            let _ = reply.send(d.current());
                        }
                    }
                }
                d
            })
            .expect("start the digest thread");
        BackgroundDigester {
            algorithm,
            pending: Vec::new(),
            written: 0,
            tx: Some(tx),
            spent,
            handle: Some(handle),
        }
    }

    /// The algorithm being computed.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Bytes hashed (or queued) so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A buffer to fill for [`BackgroundDigester::update_owned`]: one the
    /// thread has finished with when there is one (as it was handed over:
    /// its old bytes, its whole length), else a new empty one.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spent.try_recv().unwrap_or_default()
    }

    fn send(&mut self, job: Job) {
        let tx = self.tx.as_ref().expect("the sender lives until finish");
        if tx.send(job).is_err() {
            // The thread only stops when the sender is dropped or it panicked;
            // surface the panic here.
            self.join();
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            let len = batch.len();
            self.send(Job::Data(batch, len));
        }
    }

    /// Queues bytes for hashing (copied: into the pending batch, or into a
    /// reused buffer when large).
    pub fn update(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() < BATCH {
            if self.pending.capacity() == 0 {
                self.pending = self.buffer();
                self.pending.clear();
            }
            self.written += bytes.len() as u64;
            self.pending.extend_from_slice(bytes);
            return;
        }
        let mut owned = self.buffer();
        owned.clear();
        owned.extend_from_slice(bytes);
        self.update_owned(owned, bytes.len());
    }

    /// Queues the first `len` bytes of `buf` for hashing without copying
    /// them, after whatever was queued before; the rest is room the buffer
    /// keeps for its next use. The buffer comes back through
    /// [`BackgroundDigester::buffer`] once hashed.
    ///
    /// # Panics
    /// Panics if `len` is larger than the buffer.
    pub fn update_owned(&mut self, buf: Vec<u8>, len: usize) {
        assert!(
            len <= buf.len(),
            "{len} bytes asked of a {}-byte buffer",
            buf.len()
        );
        self.flush();
        self.written += len as u64;
        self.send(Job::Data(buf, len));
    }

    /// The digest of everything queued so far (waits for the thread).
    pub fn current(&mut self) -> Digest {
        self.flush();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.send(Job::Peek(reply));
        match answer.recv() {
            Ok(d) => d,
            Err(_) => self.join().finish(),
        }
    }

    fn join(&mut self) -> Digester {
        self.tx = None;
        let handle = self.handle.take().expect("joined once");
        match handle.join() {
            Ok(d) => d,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The digest of everything queued.
    pub fn finish(mut self) -> Digest {
        self.flush();
        self.join().finish()
    }
}

impl Drop for BackgroundDigester {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            // A panic in the thread was already reported when it happened.
            let _ = h.join();
        }
    }
}

/// Checks a stream against an expected digest (and optionally a size).
#[derive(Debug, Clone)]
pub struct Verifier {
    expected: Digest,
    digester: Digester,
}

impl Verifier {
    /// A verifier for `expected`, hashing with its algorithm.
    pub fn new(expected: Digest) -> Self {
        let digester = Digester::new(expected.algorithm());
        Verifier { expected, digester }
    }

    /// Hashes more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.digester.update(bytes);
    }

    /// Bytes seen so far.
    pub fn written(&self) -> u64 {
        self.digester.written()
    }

    /// Ends the stream: `Ok` with the digest if it matched, else the mismatch.
    pub fn verify(self) -> Result<Digest, DigestError> {
        let actual = self.digester.finish();
        if actual == self.expected {
            Ok(actual)
        } else {
            Err(DigestError::Mismatch {
                expected: self.expected,
                actual,
            })
        }
    }
}

impl io::Write for Verifier {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn known_vectors() {
        assert_eq!(
            Digest::of_bytes(Algorithm::Sha256, b"").as_str(),
            EMPTY_SHA256
        );
        assert_eq!(
            Digest::of_bytes(Algorithm::Blake3, b"").as_str(),
            "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let sha512 = Digest::of_bytes(Algorithm::Sha512, b"abc");
        assert!(sha512.hex().starts_with("ddaf35a193617aba"));
        assert_eq!(sha512.hex().len(), 128);
    }

    #[test]
    fn parse_accepts_and_round_trips() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(d.hex().len(), 64);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn parse_rejects_with_reasons() {
        let cases = [
            ("", "missing ':'"),
            ("sha256", "missing ':'"),
            ("sha256:", "non-empty"),
            ("SHA256:abc", "algorithm"),
            ("sha256+:abc", "algorithm"),
            ("sha256:abc", "64 hex"),
            (&format!("sha256:{}", "A".repeat(64)), "lowercase hex"),
            (&format!("sha256:{}", "g".repeat(64)), "lowercase hex"),
            (&format!("sha512:{}", "a".repeat(64)), "128 hex"),
            ("sha256:ab/cd", "[a-zA-Z0-9=_-]"),
        ];
        for (input, reason) in cases {
            let err = Digest::parse(input).unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
        let err = Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e").unwrap_err();
        assert_eq!(
            err,
            DigestError::Unsupported {
                algorithm: "md5".into()
            }
        );
        // Well-formed multi-component algorithms are grammatical but unsupported.
        assert!(matches!(
            Digest::parse("sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"),
            Err(DigestError::Unsupported { .. })
        ));
    }

    #[test]
    fn digester_streams_and_peeks() {
        let mut d = Digester::new(Algorithm::Sha256);
        io::Write::write_all(&mut d, b"hello ").unwrap();
        assert_eq!(d.current(), Digest::of_bytes(Algorithm::Sha256, b"hello "));
        d.update(b"world");
        assert_eq!(d.written(), 11);
        assert_eq!(
            d.finish(),
            Digest::of_bytes(Algorithm::Sha256, b"hello world")
        );
    }

    #[test]
    fn background_digester_matches_inline() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut bg = BackgroundDigester::new(Algorithm::Sha256);
        for chunk in data.chunks(1000).take(100) {
            bg.update(chunk);
        }
        assert_eq!(
            bg.current(),
            Digest::of_bytes(Algorithm::Sha256, &data[..100_000])
        );
        for chunk in data[100_000..].chunks(700_000) {
            bg.update(chunk);
        }
        assert_eq!(bg.written(), data.len() as u64);
        assert_eq!(bg.finish(), Digest::of_bytes(Algorithm::Sha256, &data));
        assert_eq!(
            BackgroundDigester::new(Algorithm::Blake3).finish(),
            Digest::of_bytes(Algorithm::Blake3, b"")
        );
    }

    #[test]
    fn background_digester_reuses_owned_buffers_in_order() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut bg = BackgroundDigester::new(Algorithm::Sha256);
        let mut chunks = data.chunks(1 << 20);
        // Copied bytes batched before an owned chunk are hashed before it.
        bg.update(&data[..10]);
        let mut buf = bg.buffer();
        buf.extend_from_slice(&data[10..1 << 20]);
        let len = buf.len();
        bg.update_owned(buf, len);
        chunks.next();
        for chunk in chunks {
            // Only the part asked for is hashed: a full-length buffer
            // carries a chunk shorter than itself.
            let mut buf = bg.buffer();
            buf.resize(1 << 20, 0xff);
            buf[..chunk.len()].copy_from_slice(chunk);
            bg.update_owned(buf, chunk.len());
        }
        assert_eq!(bg.written(), data.len() as u64);
        assert_eq!(bg.current(), Digest::of_bytes(Algorithm::Sha256, &data));
        // Once hashed (current waited for that), the buffers come back.
        let spares: Vec<Vec<u8>> = (0..9).map(|_| bg.buffer()).collect();
        assert!(spares.iter().any(|b| b.len() == 1 << 20));
        bg.update(b"tail");
        let mut all = data.clone();
        all.extend_from_slice(b"tail");
        assert_eq!(bg.finish(), Digest::of_bytes(Algorithm::Sha256, &all));
    }

    #[test]
    fn verifier_names_both_digests() {
        let expected = Digest::of_bytes(Algorithm::Sha256, b"a");
        let mut v = Verifier::new(expected.clone());
        v.update(b"b");
        let err = v.verify().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(expected.as_str()));
        assert!(msg.contains(Digest::of_bytes(Algorithm::Sha256, b"b").as_str()));
        let mut ok = Verifier::new(expected.clone());
        ok.update(b"a");
        assert_eq!(ok.verify().unwrap(), expected);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,140}") {
            if let Ok(d) = Digest::parse(&s) {
                prop_assert_eq!(d.as_str(), s.as_str());
            }
        }

        /// Inputs near the grammar's edges (known and unknown algorithms,
        /// separators, hex of each length around the right ones, one
        /// character spoilt or not): parse accepts exactly the canonical
        /// ones, about one case in eight.
        #[test]
        fn parse_accepts_exactly_the_canonical(
            alg in prop::sample::select(vec!["sha256", "sha256", "sha512", "sha512", "blake3", "blake3", "SHA256", "sha1", "sha256+b64u"]),
            sep in prop::sample::select(vec![":", ":", ":", ":", ":", "", "::", "/"]),
            len in prop::sample::select(vec![0usize, 1, 63, 64, 64, 64, 64, 65, 127, 128, 128, 128, 128, 129]),
            hex in "[0-9a-f]{130}",
            spoil in proptest::option::of((0usize..130, prop::sample::select(vec!['A', 'F', 'g', ':', '/', ' ']))),
        ) {
            let mut encoded: Vec<char> = hex[..len].chars().collect();
            if let Some((at, c)) = spoil.filter(|_| len > 0) {
                encoded[at % len] = c;
            }
            let encoded: String = encoded.into_iter().collect();
            let input = format!("{alg}{sep}{encoded}");
            let canonical = Algorithm::ALL
                .iter()
                .find(|a| a.as_str() == alg)
                .is_some_and(|a| {
                    sep == ":"
                        && encoded.len() == a.hex_len()
                        && encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
            match Digest::parse(&input) {
                Ok(d) => {
                    prop_assert!(canonical, "{} was accepted", input);
                    prop_assert_eq!(d.as_str(), input.as_str());
                    prop_assert_eq!(d.hex(), encoded.as_str());
                }
                Err(e) => prop_assert!(!canonical, "{} was refused: {}", input, e),
            }
        }

        #[test]
        fn computed_digests_parse_back(bytes in proptest::collection::vec(any::<u8>(), 0..512), alg in 0usize..3) {
            let d = Digest::of_bytes(Algorithm::ALL[alg], &bytes);
            prop_assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        }

        #[test]
        fn hex_strings_of_right_length_parse(hex in "[0-9a-f]{64}") {
            let input = format!("sha256:{hex}");
            let d = Digest::parse(&input).unwrap();
            prop_assert_eq!(d.hex(), hex.as_str());
        }

        #[test]
        fn wrong_lengths_are_rejected(hex in "[0-9a-f]{1,130}") {
            prop_assume!(hex.len() != 64);
            let input = format!("sha256:{hex}");
            prop_assert!(Digest::parse(&input).is_err());
        }
    }
}
