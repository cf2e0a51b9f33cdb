//! The multipart pipeline, from a request body to the object store (the
//! crate's in-memory double): never a panic, whatever the body; at most one
//! object is stored, only when the whole receive succeeds, holding exactly
//! the bytes the store reports; a failed receive leaves nothing.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use upload_receiver::config::MediaTypes;
use upload_receiver::storage::{ObjectKey, ObjectStore};
use upload_receiver::storage::memory::MemoryObjectStore;
use upload_receiver::tasks::Cleanup;
use upload_receiver::upload::{Form, MultipartLimits, UploadError};

/// Reads the parts up to the file (which waits in the spool until a `token`
/// field has arrived, so both paths run), stores it, reads the rest.
/// Returns the stored file's key and size.
async fn receive(
    form: &mut Form,
    objects: &Arc<dyn ObjectStore>,
    spool: &std::path::Path,
) -> Result<Option<(String, u64)>, UploadError> {
    let has_token = |fields: &[(String, String)]| fields.iter().any(|(name, _)| name == "token");
    let Some(file) = form.read_to_file(spool, has_token).await? else { return Ok(None) };
    let allowed = MediaTypes::parse(&["*/*".to_owned()]).unwrap();
    let stored = file.store(objects, &Cleanup::default(), &allowed).await?;
    if let Err(e) = form.read_rest().await {
        stored.discard().await;
        return Err(e);
    }
    let version = stored.version(0);
    stored.keep();
    Ok(Some((version.object_key, version.size)))
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the body is cut into chunks.
    let Some((&cut, body)) = data.split_first() else { return };
    let chunk = usize::from(cut % 64) + 1;
    let chunks: Vec<std::io::Result<Bytes>> =
        body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let limits = MultipartLimits { max_file_bytes: 4096, max_fields: 8, max_field_bytes: 256, max_part_header_bytes: 512 };
    let spool = std::env::temp_dir().join("upload-receiver-fuzz-spool");
    std::fs::create_dir_all(&spool).unwrap();
    let memory = Arc::new(MemoryObjectStore::default());
    let objects: Arc<dyn ObjectStore> = memory.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut form = Form::new(futures_util::stream::iter(chunks), "B", limits.clone());
        match receive(&mut form, &objects, &spool).await {
            Ok(Some((key, size))) => {
                assert_eq!(memory.len(), 1);
                let bytes = memory.bytes(&ObjectKey::parse(&key).unwrap()).expect("the reported object");
                assert_eq!(bytes.len() as u64, size);
                assert!(size <= limits.max_file_bytes);
            }
            Ok(None) | Err(_) => {
                assert!(memory.is_empty(), "a receive without a stored file left {} objects", memory.len())
            }
        }
    });
});
