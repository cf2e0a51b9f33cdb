//! An [`ObjectStore`] that keeps objects in memory: the test double of the
//! unit tests and the fuzz targets (built with the `testing` feature). It
//! keeps the seam's promises: the digest is the real one, and a `put` that
//! fails or is dropped part-way stores nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{ByteStream, Digesting, ObjectKey, ObjectStore, StorageError, StoredObject};

/// Objects in a map.
#[derive(Default)]
pub struct MemoryObjectStore(Mutex<HashMap<String, Vec<u8>>>);

impl MemoryObjectStore {
    fn objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // Every update is one insert or remove: a panic cannot leave it torn.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes stored under `key`.
    pub fn bytes(&self, key: &ObjectKey) -> Option<Vec<u8>> {
        self.objects().get(key.as_str()).cloned()
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.objects().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ObjectStore for MemoryObjectStore {
    async fn put(
        &self,
        key: &ObjectKey,
        _: &str,
        mut body: ByteStream,
    ) -> Result<StoredObject, StorageError> {
        let mut bytes = Vec::new();
        let mut digest = Digesting::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StorageError::Source)?;
            digest.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        self.objects().insert(key.as_str().to_owned(), bytes);
        Ok(digest.finish(key.clone()))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.objects().remove(key.as_str());
        Ok(())
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn sweep(&self, _min_age: std::time::Duration) -> Result<usize, StorageError> {
        Ok(0)
    }
}
