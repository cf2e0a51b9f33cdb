//! The S3 store's [`ChunkedObjects`]: a chunked file is one multipart
//! upload, started by its first chunk.
//!
//! - Chunks of at least S3's minimum part size are parts themselves (part
//!   number = chunk number), streamed from the client straight into
//!   UploadPart: nothing is buffered.
//! - Smaller chunks are staged as objects of their own
//!   (`staging/<file>/<n>`), streamed the same way; the request that
//!   stores the last chunk of a part streams the part's staged chunks, one
//!   after another, into that part (at least 5 MiB, at most
//!   [`ChunkedObject::chunks_per_part`] chunks); they are deleted when the
//!   file is complete. That costs one more write and read of each byte
//!   inside S3, and no buffer.
//!
//! Streamed requests have no overall timeout (a visitor's chunk takes as
//! long as the visitor); the body's idle timeout bounds them instead.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier,
};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::{Frame, SizeHint};

use super::{S3ObjectStore, abort, backend, sdk_error};
use crate::storage::chunked::{
    ChunkReceipt, ChunkedObject, ChunkedObjects, Crc64, LiveFiles, MIN_PART_BYTES, PartReceipt,
    chunks_per_part, combine_crc64,
};
use crate::storage::{ByteStream, ObjectKey, StorageError};

/// Where staged chunks live: outside `media/`, never served.
const STAGING: &str = "staging/";
/// The largest object one CopyObject copies.
const MAX_COPY_BYTES: u64 = 5 << 30;

/// The staged copy of chunk `number`, and the prefix of all of a file's.
fn staged_key(file: &ChunkedObject, number: u64) -> String {
    format!("{}{number}", staged_prefix(&file.key))
}

fn staged_prefix(key: &str) -> String {
    format!("{STAGING}{}/", key.rsplit('/').next().unwrap_or_default())
}

/// A request body fed from a channel: `Sync`, as the SDK wants, whatever
/// the stream behind it is.
struct ChannelBody {
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    size: u64,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.chunks.poll_recv(cx).map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.size)
    }
}

/// Feeds `body` to `send` (a request taking the channel's body) while
/// taking its CRC; a failure of the source is reported as the source's.
async fn streamed<F, Fut, T>(body: ByteStream, size: u64, send: F) -> Result<(T, ChunkReceipt), StorageError>
where
    F: FnOnce(S3Body) -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let (sender, chunks) = tokio::sync::mpsc::channel(4);
    let crc = Arc::new(Mutex::new(Crc64::default()));
    let source_failure = Arc::new(Mutex::new(None));
    let feed = {
        let (crc, source_failure) = (Arc::clone(&crc), Arc::clone(&source_failure));
        async move {
            let mut body = body;
            while let Some(bytes) = body.next().await {
                let item = match bytes {
                    Ok(bytes) => {
                        crc.lock().unwrap_or_else(std::sync::PoisonError::into_inner).update(&bytes);
                        Ok(bytes)
                    }
                    Err(e) => {
                        let copy = std::io::Error::new(e.kind(), e.to_string());
                        *source_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                        Err(copy)
                    }
                };
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
    };
    let (_, sent) = tokio::join!(feed, send(S3Body::from_body_1_x(ChannelBody { chunks, size })));
    if let Some(e) = source_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        return Err(StorageError::Source(e));
    }
    let receipt = crc.lock().unwrap_or_else(std::sync::PoisonError::into_inner).receipt(None);
    if receipt.size != size {
        // The request failed for want of bytes: the client's fault.
        let short = format!("the chunk holds {} bytes, not the {size} it announced", receipt.size);
        return Err(StorageError::Source(std::io::Error::new(std::io::ErrorKind::InvalidData, short)));
    }
    Ok((sent?, receipt))
}

/// No attempt timeout: the client sets the pace of a streamed request.
fn unbounded() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(aws_config::timeout::TimeoutConfig::disabled())
}

impl S3ObjectStore {
    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), StorageError> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build().map_err(backend))
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder().set_objects(Some(objects)).quiet(true).build().map_err(backend)?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(sdk_error)?;
        }
        Ok(())
    }

    /// Every staged key under `prefix`, with when it was written.
    async fn staged_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, StorageError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(sdk_error)?;
            for object in page.contents() {
                let modified = object.last_modified().and_then(|t| SystemTime::try_from(*t).ok());
                if let Some(key) = object.key() {
                    keys.push((key.to_owned(), modified));
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(keys),
            }
        }
    }

    /// Streams `body` (`size` bytes) into the object `key`: a chunk staged
    /// on its own, or a file of one chunk stored whole.
    async fn put_streamed(
        &self,
        key: String,
        content_type: Option<String>,
        size: u64,
        body: ByteStream,
    ) -> Result<ChunkReceipt, StorageError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(content_type)
            .content_length(i64::try_from(size).map_err(backend)?);
        let ((), receipt) = streamed(body, size, |body| async move {
            request
                .body(body)
                .customize()
                .config_override(unbounded())
                .disable_payload_signing()
                .send()
                .await
                .map_err(sdk_error)?;
            Ok(())
        })
        .await?;
        Ok(receipt)
    }

    /// Streams `body` (`size` bytes) into part `part` of the file's
    /// multipart upload; returns the part's ETag and what passed.
    async fn upload_part_streamed(
        &self,
        file: &ChunkedObject,
        part: u64,
        size: u64,
        body: ByteStream,
    ) -> Result<(Option<String>, ChunkReceipt), StorageError> {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&file.key)
            .upload_id(self.upload_id(file)?)
            .part_number(i32::try_from(part).map_err(backend)?)
            .content_length(i64::try_from(size).map_err(backend)?);
        streamed(body, size, |body| async move {
            let sent = request
                .body(body)
                .customize()
                .config_override(unbounded())
                .disable_payload_signing()
                .send()
                .await
                .map_err(sdk_error)?;
            Ok(sent.e_tag().map(str::to_owned))
        })
        .await
    }

    fn upload_id<'a>(&self, file: &'a ChunkedObject) -> Result<&'a str, StorageError> {
        file.upload_id.as_deref().ok_or_else(|| backend("a chunked file without its multipart upload"))
    }

    /// Completes the file's multipart upload, then deletes its staged
    /// chunks. Completed already (by a request that did not live to answer)
    /// is done.
    async fn complete_upload(
        &self,
        file: &ChunkedObject,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<(), StorageError> {
        let parts = parts
            .iter()
            .map(|p| {
                Ok(CompletedPart::builder()
                    .part_number(i32::try_from(p.number).map_err(backend)?)
                    .set_e_tag(p.etag.clone())
                    .build())
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&file.key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await;
        match completed {
            Ok(_) => {
                if file.chunks_per_part > 1 {
                    let staged = self.staged_under(&staged_prefix(&file.key)).await;
                    let deleted = match staged {
                        Ok(staged) => {
                            self.delete_keys(staged.into_iter().map(|(key, _)| key).collect()).await
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = deleted {
                        tracing::warn!(key = %file.key, error = %crate::causes::chain(&e), "staged chunks not deleted; the sweep will");
                    }
                }
                Ok(())
            }
            // Completed already?
            Err(e) if e.as_service_error().and_then(|e| e.code()) == Some("NoSuchUpload") => {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&file.key)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                Ok(())
            }
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// Gives the assembled object `content_type` (its upload began with a
    /// guess): a copy onto itself, which S3 makes within the server. Past
    /// the 5 GiB a copy can take, the guess stays (the version records the
    /// type either way).
    async fn retype(&self, file: &ChunkedObject, content_type: &str) -> Result<(), StorageError> {
        if file.total_size > MAX_COPY_BYTES {
            tracing::warn!(key = %file.key, content_type, "a chunked file over 5 GiB keeps the content type it began with");
            return Ok(());
        }
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(&file.key)
            .copy_source(format!("{}/{}", self.bucket, file.key))
            .metadata_directive(MetadataDirective::Replace)
            .content_type(content_type)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

#[async_trait]
impl ChunkedObjects for S3ObjectStore {
    async fn begin(
        &self,
        total_size: u64,
        chunk_size: u64,
        whole: bool,
        content_type: &str,
    ) -> Result<ChunkedObject, StorageError> {
        let key = ObjectKey::new_chunked_media();
        if whole {
            // One chunk: one PutObject, nothing to assemble.
            return Ok(ChunkedObject {
                key: key.to_string(),
                total_size,
                chunk_size,
                chunks_per_part: 1,
                upload_id: None,
                content_type: Some(content_type.to_owned()),
            });
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .send()
            .await
            .map_err(sdk_error)?;
        let upload_id =
            created.upload_id().ok_or_else(|| backend("CreateMultipartUpload gave no upload id"))?;
        Ok(ChunkedObject {
            key: key.to_string(),
            total_size,
            chunk_size,
            chunks_per_part: chunks_per_part(total_size, chunk_size, MIN_PART_BYTES),
            upload_id: Some(upload_id.to_owned()),
            content_type: Some(content_type.to_owned()),
        })
    }

    async fn put_chunk(
        &self,
        file: &ChunkedObject,
        number: u64,
        size: u64,
        body: ByteStream,
    ) -> Result<ChunkReceipt, StorageError> {
        if file.upload_id.is_none() {
            return self.put_streamed(file.key.clone(), file.content_type.clone(), size, body).await;
        }
        if file.chunks_per_part == 1 {
            let (etag, mut receipt) = self.upload_part_streamed(file, number, size, body).await?;
            receipt.etag = etag;
            return Ok(receipt);
        }
        self.put_streamed(staged_key(file, number), None, size, body).await
    }

    async fn put_part(
        &self,
        file: &ChunkedObject,
        part: u64,
        chunks: &[(u64, ChunkReceipt)],
    ) -> Result<PartReceipt, StorageError> {
        // The staged chunks, read one after another, stream into the part:
        // nothing is buffered beyond the transfer's own few chunks.
        let size: u64 = chunks.iter().map(|(_, r)| r.size).sum();
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let keys: Vec<String> = chunks.iter().map(|(number, _)| staged_key(file, *number)).collect();
        let staged: ByteStream = Box::pin(
            futures_util::stream::iter(keys)
                .then(move |key| {
                    let (client, bucket) = (client.clone(), bucket.clone());
                    async move { client.get_object().bucket(bucket).key(key).send().await }
                })
                .flat_map(|got| match got {
                    Ok(object) => futures_util::stream::unfold(object.body, |mut body| async move {
                        let bytes = body.next().await?;
                        Some((bytes.map_err(std::io::Error::other), body))
                    })
                    .boxed(),
                    Err(e) => {
                        let failed = std::io::Error::other(crate::causes::chain(&e));
                        futures_util::stream::once(async move { Err(failed) }).boxed()
                    }
                }),
        );
        let result = self.upload_part_streamed(file, part, size, staged).await;
        // (A staged chunk that cannot be read is the store's failure, not a client's.)
        let (etag, read) = result.map_err(|e| match e {
            StorageError::Source(e) => backend(e),
            other => other,
        })?;
        let receipts: Vec<ChunkReceipt> = chunks.iter().map(|(_, r)| r.clone()).collect();
        if read.crc64 != combine_crc64(&receipts) {
            return Err(backend(format!("the staged chunks of part {part} do not match their receipts")));
        }
        Ok(PartReceipt { number: part, etag })
    }

    /// Completes the multipart upload, then deletes the staged chunks (kept
    /// until now: a part whose record was lost is made again from them).
    async fn complete(
        &self,
        file: &ChunkedObject,
        parts: &[PartReceipt],
        content_type: &str,
    ) -> Result<(), StorageError> {
        let Some(upload_id) = file.upload_id.as_deref() else { return Ok(()) };
        self.complete_upload(file, upload_id, parts).await?;
        if file.content_type.as_deref() != Some(content_type) {
            self.retype(file, content_type).await?;
        }
        Ok(())
    }

    async fn abort(&self, file: &ChunkedObject) -> Result<(), StorageError> {
        let Some(upload_id) = file.upload_id.as_deref() else {
            let key = file.object_key()?;
            return super::super::ObjectStore::delete(self, &key).await;
        };
        abort(&self.client, &self.bucket, &file.key, upload_id).await?;
        let staged = self.staged_under(&staged_prefix(&file.key)).await?;
        self.delete_keys(staged.into_iter().map(|(key, _)| key).collect()).await
    }

    async fn sweep_chunked(&self, grace: Duration, live: &dyn LiveFiles) -> Result<usize, StorageError> {
        let cutoff = SystemTime::now() - grace;
        let old = |time: Option<SystemTime>| time.is_some_and(|t| t < cutoff);
        let mut cleaned = std::collections::BTreeSet::new();
        for upload in self.open_uploads().await? {
            let Ok(key) = ObjectKey::parse(&upload.key) else { continue };
            if key.is_chunked() && old(upload.started) && !live.is_live(&key).await? {
                abort(&self.client, &self.bucket, key.as_str(), &upload.id).await?;
                cleaned.insert(key.to_string());
            }
        }
        let mut leftovers = Vec::new();
        for (staged, modified) in self.staged_under(STAGING).await? {
            let name = staged.trim_start_matches(STAGING).split('/').next().unwrap_or_default();
            let Ok(key) = ObjectKey::parse(&format!("{}{name}", super::KEY_SPACE)) else { continue };
            if old(modified) && (cleaned.contains(key.as_str()) || !live.is_live(&key).await?) {
                cleaned.insert(key.to_string());
                leftovers.push(staged);
            }
        }
        self.delete_keys(leftovers).await?;
        Ok(cleaned.len())
    }
}
