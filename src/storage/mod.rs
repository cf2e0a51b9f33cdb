//! Object storage for file bytes: the [`ObjectStore`] seam.
//!
//! An object store takes a byte stream under a key the receiver built and
//! reports what it stored: key, size and SHA-256 (computed while the bytes
//! pass, never by reading the object back). On any error, or if the `put`
//! future is dropped part-way (the client went away), nothing partial remains
//! under the key: the local-files store writes to a temporary file that is
//! removed, an S3 store aborts its multipart upload.

pub mod chunked;
pub mod fs;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod s3;

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};

use crate::causes::BoxError;
use crate::domain::random_bytes;

/// A stream of file bytes. Errors come from the source (client gone, limit
/// exceeded, idle timeout) and abort the `put` that consumes the stream.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A key in the object store, always built by the receiver: lowercase
/// letters, digits, `-` and `/`-separated segments, no `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A fresh, unguessable key for a new file: `media/<32 hex>`.
    pub fn new_media() -> Self {
        ObjectKey(format!("media/{}", hex::encode(random_bytes::<16>())))
    }

    /// A fresh key for a file sent in chunks: `media/<32 hex>-c`. The sweep
    /// tells these apart: their assembly lasts as long as chunks keep
    /// coming, so only the state store knows when it is abandoned.
    pub fn new_chunked_media() -> Self {
        ObjectKey(format!("media/{}-c", hex::encode(random_bytes::<16>())))
    }

    /// Whether this is the key of a file sent in chunks.
    pub fn is_chunked(&self) -> bool {
        self.0.ends_with("-c")
    }

    /// Checks a key read back from the state store.
    pub fn parse(s: &str) -> Result<Self, BadObjectKey> {
        let well_formed = !s.is_empty()
            && s.len() <= 512
            && s.split('/').all(|segment| {
                !segment.is_empty()
                    && segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if well_formed { Ok(ObjectKey(s.to_owned())) } else { Err(BadObjectKey) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a well-formed object key")]
pub struct BadObjectKey;

/// What a successful `put` stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub key: ObjectKey,
    pub size: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub sha256: String,
}

/// Why a `put` failed. `Source` errors come from the incoming stream (the
/// client's fault or a limit); `Backend` errors are the store's own, with
/// their cause kept for the logs.
#[derive(Debug)]
pub enum StorageError {
    Source(std::io::Error),
    Backend(BoxError),
}

impl StorageError {
    pub fn backend(cause: impl Into<BoxError>) -> Self {
        StorageError::Backend(cause.into())
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Source(e) => write!(f, "reading the upload failed: {e}"),
            StorageError::Backend(e) => write!(f, "object store: {e}"),
        }
    }
}

impl std::error::Error for StorageError {
    // The cause's own text is in this error's; its causes come next.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Source(e) => e.source(),
            StorageError::Backend(e) => e.source(),
        }
    }
}

/// Where file bytes go. Chosen once at start-up, shared as `Arc<dyn ObjectStore>`.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Streams `body` under `key` and returns the size and SHA-256 stored.
    /// The object becomes visible under `key` only when complete. On error
    /// or drop, nothing remains under `key` and no temporary data lingers.
    /// `content_type` is recorded where the backend supports it.
    async fn put(
        &self,
        key: &ObjectKey,
        content_type: &str,
        body: ByteStream,
    ) -> Result<StoredObject, StorageError>;

    /// Removes `key`; removing an absent key succeeds.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// Succeeds when the store can take uploads (for `/readyz`).
    async fn ping(&self) -> Result<(), StorageError>;

    /// Removes what a crashed process left half-written more than `min_age`
    /// ago, returning how many it removed. Run periodically by the
    /// application; a store that cleans up at start-up does nothing.
    async fn sweep(&self, min_age: std::time::Duration) -> Result<usize, StorageError>;
}

/// Running size and SHA-256 of the bytes that pass through a `put`; every
/// backend uses this one digest so they report identical checksums.
#[derive(Default)]
pub struct Digesting {
    hasher: Sha256,
    size: u64,
}

/// A [`Digesting`] that hashes on a blocking-pool thread, in parallel with
/// whatever the caller does with the bytes (parse, write). Chunks are
/// shared, not copied; at most `QUEUE` wait, which bounds the extra memory.
pub struct ParallelDigest {
    chunks: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    hasher: tokio::task::JoinHandle<Digesting>,
}

impl Default for ParallelDigest {
    fn default() -> Self {
        const QUEUE: usize = 4;
        let (chunks, mut queue) = tokio::sync::mpsc::channel::<bytes::Bytes>(QUEUE);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut digest = Digesting::default();
            while let Some(chunk) = queue.blocking_recv() {
                digest.update(&chunk);
            }
            digest
        });
        ParallelDigest { chunks: Some(chunks), hasher }
    }
}

impl ParallelDigest {
    pub async fn update(&mut self, chunk: &bytes::Bytes) {
        if let Some(chunks) = &self.chunks {
            // The hasher only stops when this sender is dropped.
            let _ = chunks.send(chunk.clone()).await;
        }
    }

    pub async fn finish(mut self, key: ObjectKey) -> Result<StoredObject, StorageError> {
        drop(self.chunks.take());
        let digest = (&mut self.hasher).await.map_err(StorageError::backend)?;
        Ok(digest.finish(key))
    }
}

impl Drop for ParallelDigest {
    fn drop(&mut self) {
        // An abandoned upload: the hasher ends when its queue closes.
        drop(self.chunks.take());
    }
}

impl Digesting {
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(self, key: ObjectKey) -> StoredObject {
        StoredObject { key, size: self.size, sha256: hex::encode(self.hasher.finalize()) }
    }
}

/// A temporary file that is removed when dropped, unless kept: every error
/// path, and a future dropped mid-stream (the client went away), clean up.
pub struct TempFile {
    path: std::path::PathBuf,
    keep: bool,
}

impl TempFile {
    /// Creates `dir/<random>.part` for writing.
    pub async fn create(dir: &std::path::Path) -> std::io::Result<(tokio::fs::File, TempFile)> {
        let path = dir.join(format!("{}.part", hex::encode(random_bytes::<16>())));
        let file = tokio::fs::File::create(&path).await?;
        Ok((file, TempFile { path, keep: false }))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The file was renamed into place or is otherwise no longer temporary.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_keys_are_well_formed_and_unique() {
        let a = ObjectKey::new_media();
        assert_eq!(ObjectKey::parse(a.as_str()), Ok(a.clone()));
        assert_ne!(a, ObjectKey::new_media());
    }

    #[test]
    fn keys_with_dots_slashes_or_uppercase_are_refused() {
        for bad in ["", "../x", "media/../x", "/abs", "media//x", "Media/x", "media/x.jpg", "a\\b"] {
            assert_eq!(ObjectKey::parse(bad), Err(BadObjectKey), "{bad:?}");
        }
    }

    #[test]
    fn digest_of_nothing_is_the_empty_sha256() {
        let stored = Digesting::default().finish(ObjectKey::new_media());
        assert_eq!(stored.size, 0);
        assert_eq!(stored.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
