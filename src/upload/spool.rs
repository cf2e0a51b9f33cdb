//! A temporary file for a `file` part that arrived before the fields its
//! gate needs. Its size is bounded by the multipart limit on the file part;
//! it is removed when dropped, whether or not it was read back.

use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::storage::{ByteStream, StorageError, TempFile};

/// Read buffer when streaming a spooled file on.
const READ_CHUNK: usize = 256 * 1024;

pub struct Spool {
    file: TempFile,
}

impl Spool {
    /// Writes all of `bytes` to a new file in `dir`.
    pub async fn fill(dir: &Path, mut bytes: ByteStream) -> Result<Spool, StorageError> {
        let backend = |e: std::io::Error| StorageError::backend(format!("spool: {e}"));
        tokio::fs::create_dir_all(dir).await.map_err(backend)?;
        let (mut writer, file) = TempFile::create(dir).await.map_err(backend)?;
        while let Some(chunk) = bytes.next().await {
            writer.write_all(&chunk.map_err(StorageError::Source)?).await.map_err(backend)?;
        }
        writer.flush().await.map_err(backend)?;
        Ok(Spool { file })
    }

    /// The spooled bytes as a stream; the file goes when the stream does.
    pub async fn drain(self) -> std::io::Result<ByteStream> {
        let reader = tokio::fs::File::open(self.file.path()).await?;
        let file = self.file;
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).map(move |chunk| {
            // Holding the guard here ties the file's life to the stream's.
            let _ = &file;
            chunk
        });
        Ok(Box::pin(stream))
    }
}
