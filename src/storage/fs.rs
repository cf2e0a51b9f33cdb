//! The local-files [`ObjectStore`] of the embedded default: objects are files
//! under `data_dir/objects`, written to a temporary file first and renamed
//! into place only when complete and synced.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{ByteStream, ObjectKey, ObjectStore, ParallelDigest, StorageError, StoredObject, TempFile};
use crate::domain::random_bytes;

/// Files under one root directory.
pub struct FsObjectStore {
    root: PathBuf,
    tmp: PathBuf,
}

fn backend(e: std::io::Error) -> StorageError {
    StorageError::backend(e)
}

impl FsObjectStore {
    /// Uses `root` (created if needed). Temporary files live in `root/.tmp`,
    /// on the same file system, so the final rename is atomic; any left by a
    /// crash are removed here.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(FsObjectStore { root: root.to_owned(), tmp })
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        // ObjectKey admits only [a-z0-9-] segments, so this stays under root.
        self.root.join(key.as_str())
    }
}

#[async_trait]
impl ObjectStore for FsObjectStore {
    async fn put(
        &self,
        key: &ObjectKey,
        _content_type: &str,
        mut body: ByteStream,
    ) -> Result<StoredObject, StorageError> {
        let final_path = self.path_of(key);
        let (mut file, temp) = TempFile::create(&self.tmp).await.map_err(backend)?;
        let mut digest = ParallelDigest::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StorageError::Source)?;
            digest.update(&chunk).await;
            file.write_all(&chunk).await.map_err(backend)?;
        }
        file.sync_all().await.map_err(backend)?;
        drop(file);
        if let Some(parent) = final_path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(backend)?;
        }
        tokio::fs::rename(temp.path(), &final_path).await.map_err(backend)?;
        temp.keep();
        digest.finish(key.clone()).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn ping(&self) -> Result<(), StorageError> {
        // Proves the directory is writable, not just present.
        let probe = self.tmp.join(format!("ping-{}", hex::encode(random_bytes::<8>())));
        tokio::fs::write(&probe, b"").await.map_err(backend)?;
        tokio::fs::remove_file(&probe).await.map_err(backend)
    }

    /// Temporary files of a crashed process are removed when the store is
    /// opened (one process owns the data directory); a live upload's must
    /// not be touched, so there is nothing to sweep.
    async fn sweep(&self, _min_age: std::time::Duration) -> Result<usize, StorageError> {
        Ok(0)
    }
}
