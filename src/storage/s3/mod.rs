//! The S3 [`ObjectStore`] (AWS or any S3-compatible server).
//!
//! A file smaller than one part is sent with a single PutObject; a larger one
//! as a multipart upload of `part_size` parts through `parts_in_flight`
//! reused part buffers (one filling, the others on the wire), so memory per
//! upload stays near `part_size × parts_in_flight` whatever the file size. Each part (or
//! the single object) carries its SHA-256 as its S3 checksum, so S3 checks
//! what it received; with that header the payload is sent unsigned (SigV4
//! `UNSIGNED-PAYLOAD`), sparing a third hash of every byte.
//!
//! When a `put` fails or is dropped mid-stream (the client went away), the
//! multipart upload is aborted. Uploads orphaned by a crashed process are
//! aborted by the store's sweep, which the application runs periodically.

mod chunked;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::{ByteStream, ObjectKey, ObjectStore, ParallelDigest, StorageError, StoredObject};
use crate::config::StorageConfig;
use crate::tasks::Cleanup;

/// Every key the receiver writes starts with this (see [`ObjectKey`]).
const KEY_SPACE: &str = "media/";

fn backend(e: impl Into<crate::causes::BoxError>) -> StorageError {
    StorageError::backend(e)
}

/// The SDK error with its cause chain, for logs (its `Display` is terse).
fn sdk_error<E: std::error::Error>(e: E) -> StorageError {
    StorageError::backend(crate::causes::chain(&e))
}

fn sha256_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// Objects in one S3 bucket.
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
    part_size: usize,
    parts_in_flight: usize,
    /// Where aborts of dropped uploads run.
    cleanup: Cleanup,
}

impl S3ObjectStore {
    /// A store for `config.bucket`, with credentials from the standard AWS
    /// chain and every call bounded by `config.timeout_secs`. Aborts of
    /// uploads dropped mid-stream run on `cleanup`.
    pub async fn new(config: &StorageConfig, cleanup: Cleanup) -> Result<Self, StorageError> {
        let bucket = config.bucket.clone().ok_or_else(|| backend("storage.bucket is not set"))?;
        let timeout = Duration::from_secs(config.timeout_secs);
        // `timeout_secs` bounds a whole call, the SDK's retries included:
        // an upload fails within about that long after S3 stops answering.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .operation_attempt_timeout(timeout)
            .operation_timeout(timeout)
            .build();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .timeout_config(timeouts)
            .load()
            .await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            // We send SHA-256 checksums ourselves; no extra CRC on top.
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(S3ObjectStore {
            client: Client::from_conf(builder.build()),
            bucket,
            part_size: usize::try_from(config.part_size).map_err(backend)?,
            parts_in_flight: config.parts_in_flight.max(2),
            cleanup,
        })
    }

    async fn put_single(
        &self,
        key: &ObjectKey,
        content_type: &str,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .checksum_sha256(sha256_base64(&bytes))
            .body(S3Body::from(bytes))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

/// Whether an upload started at `started` is old enough to be taken as left
/// by a dead process. An upload whose start is unknown is left alone.
fn is_orphaned(started: Option<SystemTime>, cutoff: SystemTime) -> bool {
    started.is_some_and(|started| started < cutoff)
}

async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<(), StorageError> {
    let aborted = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await;
    match aborted {
        Ok(_) => Ok(()),
        // Aborted meanwhile by someone else (another instance's sweep, a
        // clean-up task) or completed: gone either way, which is the point.
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_upload()) => Ok(()),
        Err(e) => Err(sdk_error(e)),
    }
}

/// Aborts the multipart upload when dropped, unless it completed: covers
/// every error path and a `put` future dropped mid-stream.
struct AbortOnDrop {
    cleanup: Cleanup,
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    completed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let (client, bucket, key, upload_id) =
            (self.client.clone(), self.bucket.clone(), self.key.clone(), self.upload_id.clone());
        // Drop cannot wait; the abort runs on its own. If it fails, the
        // periodic sweep aborts the upload later.
        self.cleanup.spawn(async move {
            if let Err(e) = abort(&client, &bucket, &key, &upload_id).await {
                tracing::warn!(%key, error = %e, "aborting a multipart upload failed; the sweep will retry");
            }
        });
    }
}

/// Reads the body into part-sized buffers, exactly `part_size` bytes each
/// (a chunk that crosses a part boundary is split, its rest kept for the
/// next part), and updates the digest as bytes arrive.
struct PartReader {
    body: ByteStream,
    digest: ParallelDigest,
    /// The rest of a chunk that crossed the previous part boundary.
    carry: Option<Bytes>,
    part_size: usize,
}

impl PartReader {
    /// Fills `buffer` up to the part size; `false` when the body ended first.
    async fn fill(&mut self, buffer: &mut BytesMut) -> Result<bool, StorageError> {
        while buffer.len() < self.part_size {
            let chunk = match self.carry.take() {
                Some(chunk) => chunk,
                None => match self.body.next().await {
                    Some(chunk) => {
                        let chunk = chunk.map_err(StorageError::Source)?;
                        self.digest.update(&chunk).await;
                        chunk
                    }
                    None => return Ok(false),
                },
            };
            let room = self.part_size - buffer.len();
            if chunk.len() > room {
                self.carry = Some(chunk.slice(room..));
                buffer.extend_from_slice(&chunk[..room]);
            } else {
                buffer.extend_from_slice(&chunk);
            }
        }
        Ok(true)
    }
}

/// One uploaded part, and its buffer to use again.
type PartDone = Result<(CompletedPart, Bytes), StorageError>;

/// Takes the buffer of an uploaded part back for the next part; when the
/// SDK still holds a reference, a fresh buffer is used instead.
fn recycle(bytes: Bytes, spare: &mut Vec<BytesMut>) {
    if let Ok(mut buffer) = bytes.try_into_mut() {
        buffer.clear();
        spare.push(buffer);
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(
        &self,
        key: &ObjectKey,
        content_type: &str,
        body: ByteStream,
    ) -> Result<StoredObject, StorageError> {
        let mut reader =
            PartReader { body, digest: ParallelDigest::default(), carry: None, part_size: self.part_size };
        let mut buffer = BytesMut::with_capacity(self.part_size);
        if !reader.fill(&mut buffer).await? {
            self.put_single(key, content_type, buffer.freeze()).await?;
            return reader.digest.finish(key.clone()).await;
        }

        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(sdk_error)?;
        let upload_id =
            created.upload_id().ok_or_else(|| backend("CreateMultipartUpload gave no upload id"))?;
        let mut guard = AbortOnDrop {
            cleanup: self.cleanup.clone(),
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.as_str().to_owned(),
            upload_id: upload_id.to_owned(),
            completed: false,
        };

        // At most `parts_in_flight` part buffers exist: the one being filled
        // and the ones being uploaded. They are reused from part to part, so
        // memory stays near part_size × parts_in_flight whatever the
        // allocator keeps of freed blocks.
        let mut in_flight: JoinSet<PartDone> = JoinSet::new();
        let mut spare: Vec<BytesMut> = Vec::new();
        let mut parts = Vec::new();
        let mut part_number = 0;
        while !buffer.is_empty() {
            let part = buffer.split().freeze();
            part_number += 1;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key.as_str())
                .upload_id(upload_id)
                .part_number(part_number);
            in_flight.spawn(async move {
                // Hashed here, on whichever worker runs the part, in parallel
                // with reading the next one. S3 verifies the part against the
                // checksum header, so the payload itself need not be hashed
                // once more for the signature.
                let sent = request
                    .checksum_sha256(sha256_base64(&part))
                    .body(S3Body::from(part.clone()))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(sdk_error)?;
                let done = CompletedPart::builder()
                    .part_number(part_number)
                    .set_e_tag(sent.e_tag().map(str::to_owned))
                    .set_checksum_sha256(sent.checksum_sha256().map(str::to_owned))
                    .build();
                Ok((done, part))
            });
            // One buffer is about to be filled: the others may be uploading.
            while in_flight.len() >= self.parts_in_flight - 1 {
                let (done, bytes) =
                    in_flight.join_next().await.expect("the set is not empty").map_err(backend)??;
                parts.push(done);
                recycle(bytes, &mut spare);
            }
            buffer = spare.pop().unwrap_or_else(|| BytesMut::with_capacity(self.part_size));
            // A full part, a shorter last one, or nothing at the end.
            reader.fill(&mut buffer).await?;
        }
        while let Some(done) = in_flight.join_next().await {
            parts.push(done.map_err(backend)??.0);
        }
        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(sdk_error)?;
        guard.completed = true;
        reader.digest.finish(key.clone()).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.client.delete_object().bucket(&self.bucket).key(key.as_str()).send().await.map_err(sdk_error)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.client.head_bucket().bucket(&self.bucket).send().await.map_err(sdk_error)?;
        Ok(())
    }

    /// Aborts multipart uploads under the receiver's key space that were
    /// started more than `min_age` ago (left by a process that died).
    /// Returns how many were aborted.
    async fn sweep(&self, min_age: Duration) -> Result<usize, StorageError> {
        let cutoff = SystemTime::now() - min_age;
        let mut aborted = 0;
        for upload in self.open_uploads().await? {
            // A chunked file's assembly lasts as long as chunks come:
            // `sweep_chunked` asks the state store about it.
            let chunked = ObjectKey::parse(&upload.key).is_ok_and(|key| key.is_chunked());
            if !chunked && is_orphaned(upload.started, cutoff) {
                abort(&self.client, &self.bucket, &upload.key, &upload.id).await?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }
}

/// A multipart upload open under the receiver's key space.
struct OpenUpload {
    key: String,
    id: String,
    started: Option<SystemTime>,
}

impl S3ObjectStore {
    /// Every multipart upload open under the receiver's key space, all pages.
    async fn open_uploads(&self) -> Result<Vec<OpenUpload>, StorageError> {
        let mut open = Vec::new();
        let (mut key_marker, mut upload_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(KEY_SPACE)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(sdk_error)?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else { continue };
                let started = upload.initiated().and_then(|t| SystemTime::try_from(*t).ok());
                open.push(OpenUpload { key: key.to_owned(), id: id.to_owned(), started });
            }
            if page.is_truncated() != Some(true) {
                return Ok(open);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_marker = page.next_upload_id_marker().map(str::to_owned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uploads_started_before_the_cutoff_are_orphans() {
        let now = SystemTime::now();
        let cutoff = now - Duration::from_secs(3600);
        assert!(is_orphaned(Some(now - Duration::from_secs(7200)), cutoff));
        assert!(!is_orphaned(Some(now - Duration::from_secs(60)), cutoff));
        assert!(!is_orphaned(None, cutoff));
    }
}
