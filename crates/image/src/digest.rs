//! Content digests (`sha256:<64 hex>`), the only kind the store accepts.
//!
//! Digests come from manifests, that is from hostile bytes, and become file names under
//! `blobs/sha256/` and `layers/`: parsing them strictly (lower-case hex, exact length) is what keeps
//! `sha256:../../etc` from ever reaching the file system.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// The only algorithm the store keeps blobs under.
pub const SHA256_PREFIX: &str = "sha256:";
const SHA256_HEX_LEN: usize = 64;

/// A validated `sha256:<hex>` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`; anything else is an error message.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(format!(
                "digest {s:?} has no algorithm (expected sha256:<hex>)"
            ));
        };
        if algorithm != "sha256" {
            return Err(format!(
                "digest algorithm {algorithm:?} is not supported (only sha256 is)"
            ));
        }
        if hex.len() != SHA256_HEX_LEN
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "digest {s:?} is not sha256 followed by {SHA256_HEX_LEN} lower-case hex digits"
            ));
        }
        Ok(Digest(s.to_owned()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("{SHA256_PREFIX}{}", hex::encode(hasher.finalize())))
    }

    /// The hex part, used as a file name.
    pub fn hex(&self) -> &str {
        &self.0[SHA256_PREFIX.len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reader that hashes and counts what passes through it and refuses to read more than `limit`
/// bytes (the error carries [`LimitExceeded`] so callers can tell it from a real I/O error).
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

/// Marker payload of the `io::Error` a [`HashingReader`] returns past its limit.
#[derive(Debug, thiserror::Error)]
#[error("stream exceeds its limit of {0} bytes")]
pub(crate) struct LimitExceeded(pub u64);

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }

    /// Reads everything left (for example the zero blocks after a tar's end marker), so that the
    /// digest covers the whole stream.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    pub(crate) fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(LimitExceeded(self.limit)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Whether `err` (or an error it wraps) came from a [`HashingReader`] past its limit.
pub(crate) fn is_limit_exceeded(err: &io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if e.is::<LimitExceeded>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            source = io.get_ref().map(|e| e as _);
            continue;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_computes_sha256() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.hex().len(), 64);
    }

    #[test]
    fn refuses_anything_that_could_be_a_path() {
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha512:abc",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:",
            &format!("{EMPTY}/x"),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashing_reader_counts_hashes_and_limits() {
        let mut r = HashingReader::new(&b"hello"[..], 5);
        r.drain().unwrap();
        let (d, n) = r.finish();
        assert_eq!((d, n), (Digest::of(b"hello"), 5));

        let mut r = HashingReader::new(&b"hello!"[..], 5);
        let err = r.drain().unwrap_err();
        assert!(is_limit_exceeded(&err));
        assert!(!is_limit_exceeded(&io::Error::other("x")));
    }
}
