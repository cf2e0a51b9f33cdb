//! The multipart pipeline, from a request body to the object store (kept in
//! memory here): never a panic, whatever the body; at most one object is
//! stored, only when the receive succeeds, holding exactly the bytes the
//! store reports; a failed receive leaves nothing.
#![no_main]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use upload_receiver::storage::{ByteStream, ObjectKey, ObjectStore, StorageError, StoredObject};
use upload_receiver::upload::media::MediaTypes;
use upload_receiver::upload::{self, FileGate, Gate, MultipartLimits};

/// Objects in a map; a put that fails or is dropped stores nothing.
#[derive(Default)]
struct MemoryStore(Mutex<HashMap<String, Vec<u8>>>);

#[async_trait::async_trait]
impl ObjectStore for MemoryStore {
    async fn put(
        &self,
        key: &ObjectKey,
        _: &str,
        mut body: ByteStream,
    ) -> Result<StoredObject, StorageError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.map_err(StorageError::Source)?);
        }
        let stored = StoredObject { key: key.clone(), size: bytes.len() as u64, sha256: String::new() };
        self.0.lock().unwrap().insert(key.as_str().to_owned(), bytes);
        Ok(stored)
    }

    async fn get(&self, _: &ObjectKey) -> Result<Option<ByteStream>, StorageError> {
        Ok(None)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.0.lock().unwrap().remove(key.as_str());
        Ok(())
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Opens once a `token` field has arrived (or at the end of the body), so
/// both the direct and the spooled paths run.
struct TokenGate;

#[async_trait::async_trait]
impl FileGate for TokenGate {
    type Permit = ();
    type Refusal = ();

    async fn open(&mut self, fields: &[(String, String)], complete: bool) -> Result<Gate<()>, ()> {
        if complete || fields.iter().any(|(name, _)| name == "token") {
            Ok(Gate::Open(()))
        } else {
            Ok(Gate::NotYet)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the body is cut into chunks.
    let Some((&cut, body)) = data.split_first() else { return };
    let chunk = usize::from(cut % 64) + 1;
    let chunks: Vec<std::io::Result<Bytes>> =
        body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let limits = MultipartLimits {
        max_file_bytes: 4096,
        max_fields: 8,
        max_field_bytes: 256,
        max_part_header_bytes: 512,
        idle_timeout: Duration::from_secs(5),
        allowed_media_types: MediaTypes::parse(&["*/*".to_owned()]).unwrap(),
    };
    let spool = std::env::temp_dir().join("upload-receiver-fuzz-spool");
    std::fs::create_dir_all(&spool).unwrap();
    let store = MemoryStore::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let stream = futures_util::stream::iter(chunks);
        let receipt = upload::receive(stream, "B", &limits, &store, &spool, &mut TokenGate).await;
        let objects = store.0.lock().unwrap();
        match receipt.result {
            Ok(received) => match received.file {
                Some(file) => {
                    assert_eq!(objects.len(), 1);
                    let stored = &objects[file.stored.key.as_str()];
                    assert_eq!(stored.len() as u64, file.stored.size);
                    assert!(file.stored.size <= limits.max_file_bytes);
                }
                None => assert!(objects.is_empty()),
            },
            Err(_) => assert!(objects.is_empty(), "a failed receive left {} objects", objects.len()),
        }
    });
});
