//! The local-files [`ObjectStore`] of the embedded default: objects are files
//! under `data_dir/objects`, written to a temporary file first and renamed
//! into place only when complete and synced.
//!
//! A file sent in chunks gathers in `objects/.chunks/<name>`, each chunk
//! written (and synced) at its offset as it arrives, from any task; the
//! complete file is renamed into place. Those files outlive a restart (the
//! upload resumes); the sweep removes the ones the state store has
//! forgotten.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::chunked::{ChunkReceipt, ChunkedObject, ChunkedObjects, Crc64, LiveFiles, PartReceipt};
use super::{ByteStream, ObjectKey, ObjectStore, ParallelDigest, StorageError, StoredObject, TempFile};
use crate::domain::random_bytes;

/// Files under one root directory.
pub struct FsObjectStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Chunked files being received.
    chunks: PathBuf,
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
        let chunks = root.join(".chunks");
        std::fs::create_dir_all(&chunks)?;
        Ok(FsObjectStore { root: root.to_owned(), tmp, chunks })
    }

    /// Where a chunked file gathers: its key's last segment under `.chunks`.
    fn staging_of(&self, key: &ObjectKey) -> PathBuf {
        let name = key.as_str().rsplit('/').next().unwrap_or_default();
        self.chunks.join(name)
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

#[async_trait]
impl ChunkedObjects for FsObjectStore {
    /// A chunk is a part: each is written in place as it arrives.
    async fn begin(
        &self,
        total_size: u64,
        chunk_size: u64,
        _whole: bool,
        _: &str,
    ) -> Result<ChunkedObject, StorageError> {
        let key = ObjectKey::new_chunked_media();
        Ok(ChunkedObject {
            key: key.to_string(),
            total_size,
            chunk_size,
            chunks_per_part: 1,
            upload_id: None,
            content_type: None,
        })
    }

    async fn put_chunk(
        &self,
        file: &ChunkedObject,
        number: u64,
        _size: u64,
        mut body: ByteStream,
    ) -> Result<ChunkReceipt, StorageError> {
        use tokio::io::AsyncSeekExt;
        let path = self.staging_of(&file.object_key()?);
        let mut staged = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .await
            .map_err(backend)?;
        staged.seek(std::io::SeekFrom::Start(file.offset_of(number))).await.map_err(backend)?;
        let mut crc = Crc64::default();
        while let Some(bytes) = body.next().await {
            let bytes = bytes.map_err(StorageError::Source)?;
            crc.update(&bytes);
            staged.write_all(&bytes).await.map_err(backend)?;
        }
        staged.sync_data().await.map_err(backend)?;
        Ok(crc.receipt(None))
    }

    async fn put_part(
        &self,
        _: &ChunkedObject,
        _: u64,
        _: &[(u64, ChunkReceipt)],
    ) -> Result<PartReceipt, StorageError> {
        Err(StorageError::backend("local files have one chunk per part"))
    }

    async fn complete(&self, file: &ChunkedObject, _: &[PartReceipt], _: &str) -> Result<(), StorageError> {
        let key = file.object_key()?;
        let (staged, final_path) = (self.staging_of(&key), self.path_of(&key));
        if let Some(parent) = final_path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(backend)?;
        }
        match tokio::fs::rename(&staged, &final_path).await {
            Ok(()) => Ok(()),
            // Completed already (by a request that did not live to answer).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && tokio::fs::try_exists(&final_path).await.unwrap_or(false) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn abort(&self, file: &ChunkedObject) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.staging_of(&file.object_key()?)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(backend(e)),
            _ => Ok(()),
        }
    }

    async fn sweep_chunked(
        &self,
        grace: std::time::Duration,
        live: &dyn LiveFiles,
    ) -> Result<usize, StorageError> {
        let mut removed = 0;
        let mut entries = tokio::fs::read_dir(&self.chunks).await.map_err(backend)?;
        while let Some(entry) = entries.next_entry().await.map_err(backend)? {
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(|name| ObjectKey::parse(&format!("media/{name}")).ok())
            else {
                continue;
            };
            let modified = entry.metadata().await.map_err(backend)?.modified().map_err(backend)?;
            let idle = modified.elapsed().unwrap_or_default();
            if idle >= grace && !live.is_live(&key).await? {
                match tokio::fs::remove_file(entry.path()).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(backend(e)),
                    _ => removed += 1,
                }
            }
        }
        Ok(removed)
    }
}
