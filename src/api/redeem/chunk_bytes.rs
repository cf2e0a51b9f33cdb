//! Step 3 of a chunk's walk (see `chunked.rs`): its bytes, stored at
//! their place or read and dropped, held to the size the chunk announced,
//! and the refusal each way they can fail is answered with.

use futures_util::StreamExt;

use super::error::Refusal;
use crate::context::Context;
use crate::storage::chunked::{ChunkReceipt, ChunkedObjects};
use crate::storage::{ByteStream, StorageError};
use crate::store::chunked::ChunkedFile;
use crate::upload::{UploadError, storage_error};

/// Step 3: the chunk's bytes, which must be exactly its announced size.
pub(super) async fn store_chunk(
    ctx: &Context,
    objects: &dyn ChunkedObjects,
    file: &ChunkedFile,
    number: u64,
    size: u64,
    body: ByteStream,
) -> Result<ChunkReceipt, Refusal> {
    let receipt = match objects.put_chunk(&file.terms.object, number, size, exactly(body, size)).await {
        Ok(receipt) if receipt.size == size => receipt,
        Ok(receipt) => {
            return Err(Refusal::BadChunk(format!(
                "the chunk holds {} bytes, not the {size} it announced",
                receipt.size
            )));
        }
        Err(StorageError::Source(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(Refusal::BadChunk(e.to_string()));
        }
        Err(e) => return Err(storage_refusal(e)),
    };
    ctx.metrics.bytes_received.inc_by(receipt.size);
    ctx.metrics.chunk_bytes.inc_by(receipt.size);
    Ok(receipt)
}

/// Reads a body to its end, keeping nothing.
pub(super) async fn drain(mut body: ByteStream) -> Result<(), Refusal> {
    while let Some(bytes) = body.next().await {
        bytes.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Refusal::BadChunk(e.to_string()),
            _ => interrupted(e.to_string()),
        })?;
    }
    Ok(())
}

/// A chunk whose client stopped sending: a passing failure the libraries
/// retry (nobody reads the answer when the client is gone).
pub(super) fn interrupted(why: String) -> Refusal {
    Refusal::ChunkInterrupted(why)
}

/// A storage failure while a chunk is handled: the client's (it went away,
/// a limit) or the store's (passing: `503`).
pub(super) fn storage_refusal(error: StorageError) -> Refusal {
    match storage_error(error) {
        UploadError::Storage(e) => Refusal::StorageUnavailable(e),
        UploadError::Interrupted(why) => interrupted(why),
        other => Refusal::Unreadable(other),
    }
}

/// `body`, failing once it holds more than `size` bytes.
pub(super) fn exactly(body: ByteStream, size: u64) -> ByteStream {
    let mut seen = 0u64;
    Box::pin(body.map(move |bytes| {
        let bytes = bytes?;
        seen += bytes.len() as u64;
        if seen > size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the chunk holds more than the {size} bytes it announced"),
            ));
        }
        Ok(bytes)
    }))
}
