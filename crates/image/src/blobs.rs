//! The content-addressed blob store: `blobs/sha256/<hex>`.
//!
//! A blob appears under its name only once its bytes are complete and verified: downloads go to a
//! temporary file in `tmp/`, are hashed and counted while they stream (and abandoned the moment
//! they run past the size the manifest declared), are fsynced, and only then renamed into place.
//! A daemon killed half-way leaves a file in `tmp/`, which `ImageStore::open` deletes.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;

#[derive(Clone, Debug)]
pub(crate) struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

/// Why streaming a blob into the store failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The bytes do not match the descriptor (size or digest).
    Corrupt(String),
    /// The download itself failed (connection dropped, timed out).
    Source(io::Error),
    /// Writing to the local disk failed.
    Local {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl BlobStore {
    pub(crate) fn new(dir: PathBuf, tmp: PathBuf) -> BlobStore {
        BlobStore { dir, tmp }
    }

    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        std::fs::symlink_metadata(self.path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Reads a blob of at most `limit` bytes; `None` if it is not in the store.
    pub(crate) fn read(&self, digest: &Digest, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let file = match std::fs::File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(io::Error::other(format!(
                "blob {digest} is larger than {limit} bytes"
            )));
        }
        Ok(Some(bytes))
    }

    /// Stores bytes already in memory (manifests), after checking they are `digest`.
    pub(crate) fn write_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), WriteError> {
        let actual = Digest::of(bytes);
        if actual != *digest {
            return Err(WriteError::Corrupt(format!(
                "its content has digest {actual}"
            )));
        }
        if self.contains(digest) {
            return Ok(());
        }
        let mut tmp = self.temp_file()?;
        let tmp_path = tmp.path().to_owned();
        let local = |action, source| WriteError::Local {
            action,
            path: tmp_path.clone(),
            source,
        };
        tmp.write_all(bytes).map_err(|e| local("write", e))?;
        tmp.as_file().sync_all().map_err(|e| local("sync", e))?;
        self.persist(tmp, digest)
    }

    /// Streams a blob into the store, verifying its size and digest as the bytes arrive.
    pub(crate) async fn write_stream<S>(
        &self,
        digest: &Digest,
        expected_size: u64,
        mut stream: S,
    ) -> Result<u64, WriteError>
    where
        S: Stream<Item = io::Result<bytes::Bytes>> + Unpin,
    {
        let tmp = self.temp_file()?;
        let tmp_path = tmp.path().to_owned();
        let local = |action, source| WriteError::Local {
            action,
            path: tmp_path.clone(),
            source,
        };
        let std_file = tmp.as_file().try_clone().map_err(|e| local("open", e))?;
        let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(std_file));
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client's own verifying stream fails at the end on a digest mismatch; our
                // count and hash say the same thing in our words below.
                Err(e) if is_digest_error(&e) => break,
                Err(e) => return Err(WriteError::Source(e)),
            };
            received += chunk.len() as u64;
            if received > expected_size {
                return Err(WriteError::Corrupt(format!(
                    "the registry sent more than the {expected_size} bytes its descriptor declares"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| local("write", e))?;
        }
        if received != expected_size {
            return Err(WriteError::Corrupt(format!(
                "the registry sent {received} bytes, its descriptor declares {expected_size}"
            )));
        }
        let actual = Digest::from_hasher(hasher);
        if actual != *digest {
            return Err(WriteError::Corrupt(format!(
                "its content has digest {actual}"
            )));
        }
        file.flush().await.map_err(|e| local("write", e))?;
        file.get_ref()
            .sync_all()
            .await
            .map_err(|e| local("sync", e))?;
        drop(file);
        self.persist(tmp, digest)?;
        Ok(received)
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile, WriteError> {
        tempfile::Builder::new()
            .prefix("blob-")
            .suffix(".partial")
            .tempfile_in(&self.tmp)
            .map_err(|source| WriteError::Local {
                action: "create a temporary file in",
                path: self.tmp.clone(),
                source,
            })
    }

    fn persist(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<(), WriteError> {
        let target = self.path(digest);
        tmp.persist(&target).map_err(|e| WriteError::Local {
            action: "rename a verified blob to",
            path: target,
            source: e.error,
        })?;
        Ok(())
    }
}

fn is_digest_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|e| e.is::<oci_client::errors::DigestError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let s = BlobStore::new(dir.path().join("blobs"), dir.path().join("tmp"));
        (dir, s)
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = io::Result<Bytes>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn tmp_is_empty(dir: &tempfile::TempDir) -> bool {
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    }

    #[tokio::test]
    async fn verified_stream_lands_under_its_digest() {
        let (dir, s) = store();
        let d = Digest::of(b"hello world");
        let n = s
            .write_stream(&d, 11, chunks(&[b"hello", b" world"]))
            .await
            .unwrap();
        assert_eq!(n, 11);
        assert!(s.contains(&d));
        assert_eq!(s.read(&d, 100).unwrap().unwrap(), b"hello world");
        assert!(tmp_is_empty(&dir));
    }

    #[tokio::test]
    async fn wrong_digest_or_size_leaves_nothing_behind() {
        let (dir, s) = store();
        let d = Digest::of(b"hello world");
        let e = s
            .write_stream(&d, 11, chunks(&[b"hello", b" w0rld"]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, WriteError::Corrupt(ref m) if m.contains("digest")),
            "{e:?}"
        );
        let e = s
            .write_stream(&d, 5, chunks(&[b"hello", b" world"]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, WriteError::Corrupt(ref m) if m.contains("more than")),
            "{e:?}"
        );
        let e = s
            .write_stream(&d, 20, chunks(&[b"hello world"]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, WriteError::Corrupt(ref m) if m.contains("sent 11 bytes")),
            "{e:?}"
        );
        assert!(!s.contains(&d));
        assert!(tmp_is_empty(&dir));
    }

    #[test]
    fn write_bytes_checks_the_digest() {
        let (_dir, s) = store();
        let d = Digest::of(b"{}");
        assert!(matches!(
            s.write_bytes(&d, b"{ }"),
            Err(WriteError::Corrupt(_))
        ));
        s.write_bytes(&d, b"{}").unwrap();
        assert_eq!(s.read(&d, 2).unwrap().unwrap(), b"{}");
        assert!(s.read(&d, 1).is_err());
        assert!(s.read(&Digest::of(b"x"), 1).unwrap().is_none());
    }
}
