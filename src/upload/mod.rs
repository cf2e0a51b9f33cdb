//! The streaming pipeline between a multipart request body and the
//! [`ObjectStore`]: multer parses the body as it arrives, the `file` part goes
//! straight into the store chunk by chunk, and the other fields are collected
//! under count and size limits. Nothing here holds a whole file.
//!
//! Before a file may be stored, a [`FileGate`] must open: it sees the fields
//! so far (a replace token, a photo id) and reserves what the upload needs.
//! When the `file` part comes before the fields the gate needs, the file is
//! spooled to a bounded temporary file and streamed on once the gate opens.

mod guard;
pub mod media;
mod spool;

pub use guard::{PartHeadersTooLarge, limit_part_headers, repair_bare_delimiters};

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body_util::BodyExt;

use crate::storage::{ByteStream, ObjectKey, ObjectStore, StorageError, StoredObject};
use crate::store::VersionFile;
use media::MediaTypes;
use spool::Spool;

/// The name of the multipart part that carries the file.
pub const FILE_FIELD: &str = "file";

/// Bounds on one multipart body. See `[limits]` in the configuration.
#[derive(Clone, Debug)]
pub struct MultipartLimits {
    pub max_file_bytes: u64,
    pub max_fields: usize,
    pub max_field_bytes: u64,
    /// Largest part header block (and preamble).
    pub max_part_header_bytes: u64,
    pub idle_timeout: Duration,
    /// What the file's first bytes may identify it as.
    pub allowed_media_types: MediaTypes,
}

/// Why a multipart body could not be received.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body is not valid multipart, or a field breaks a rule.
    #[error("{0}")]
    Malformed(String),
    /// A limit on the fields, part headers or preamble was crossed; the
    /// rest of the body is not read.
    #[error("{0}")]
    TooLarge(String),
    /// The file is over its limit; the rest of the body is not read.
    #[error("the file exceeds the limit of {0} bytes")]
    FileTooLarge(u64),
    /// The client stopped sending (idle timeout) or went away.
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    /// The file's content is not of an allowed media type.
    #[error("the file's content ({0}) is not an accepted kind of file")]
    MediaType(&'static str),
    /// The object store failed.
    #[error("{0}")]
    Storage(String),
}

/// The file part, stored.
#[derive(Debug)]
pub struct ReceivedFile {
    pub stored: StoredObject,
    /// The media type identified from the file's first bytes (never the
    /// type the client declared).
    pub content_type: String,
    /// The client's file name, cleaned for display; never used in a key.
    pub filename: Option<String>,
}

impl ReceivedFile {
    /// What the state store records of this file as a photo version.
    pub fn into_version(self, created_at: u64) -> VersionFile {
        VersionFile {
            object_key: self.stored.key.to_string(),
            size: self.stored.size,
            content_type: self.content_type,
            sha256: self.stored.sha256,
            original_filename: self.filename,
            created_at,
        }
    }
}

/// A received multipart body.
#[derive(Debug, Default)]
pub struct Received {
    /// Non-file fields, in order.
    pub fields: Vec<(String, String)>,
    pub file: Option<ReceivedFile>,
}

/// What a [`FileGate`] answers.
pub enum Gate<P> {
    /// The file may be stored; the permit goes back to the caller.
    Open(P),
    /// The fields the gate needs have not arrived yet.
    NotYet,
}

/// Decides whether, and on whose account, a file may be stored.
#[async_trait::async_trait]
pub trait FileGate: Send {
    /// What opening the gate reserved (an upload slot, a photo id).
    type Permit: Send;
    /// Why the gate stays shut.
    type Refusal: Send;

    /// Called when the `file` part begins, with the fields seen so far
    /// (`body_complete` false), and once more after the whole body was read
    /// if it answered `NotYet` or the body had no file (`body_complete`
    /// true; `NotYet` is then a refusal the gate must spell out itself, so
    /// it must not answer it). Never called again once it opened.
    async fn open(
        &mut self,
        fields: &[(String, String)],
        body_complete: bool,
    ) -> Result<Gate<Self::Permit>, Self::Refusal>;
}

/// Why [`receive`] stopped.
#[derive(Debug)]
pub enum ReceiveError<R> {
    /// The gate refused.
    Refused(R),
    Upload(UploadError),
}

impl<R> From<UploadError> for ReceiveError<R> {
    fn from(e: UploadError) -> Self {
        ReceiveError::Upload(e)
    }
}

/// The outcome of [`receive`]. The permit is handed back whatever happened,
/// so the caller can commit it, or give it back on failure.
pub struct Receipt<P, R> {
    pub permit: Option<P>,
    pub result: Result<Received, ReceiveError<R>>,
}

/// The request body as a stream of data chunks that fails with `TimedOut`
/// when no chunk arrives within `idle_timeout`.
pub fn body_stream<B>(
    body: B,
    idle_timeout: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        loop {
            match tokio::time::timeout(idle_timeout, body.frame()).await {
                Err(_) => {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body was idle too long",
                    );
                    return Some((Err(error), None));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e.into())), None)),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Some((Ok(data), Some(body))),
                    // Trailers carry no file bytes.
                    Err(_) => continue,
                },
            }
        }
    })
}

/// Receives a multipart body: asks `gate` before storing the `file` part,
/// stores it in `store` as it arrives (or spools it under `spool_dir` first
/// when the gate is not ready), and collects the other fields. On any
/// error, an object already stored is deleted again and the spool file is
/// removed, so a failed request leaves nothing behind but the permit, which
/// is returned for the caller to give back.
pub async fn receive<S, G>(
    body: S,
    boundary: &str,
    limits: &MultipartLimits,
    store: &dyn ObjectStore,
    spool_dir: &Path,
    gate: &mut G,
) -> Receipt<G::Permit, G::Refusal>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    G: FileGate,
{
    let mut run = Run { limits, store, spool_dir, permit: None, received: Received::default() };
    let outcome = run.receive(body, boundary, gate).await;
    let Run { permit, mut received, .. } = run;
    if let Err(error) = outcome {
        if let Some(file) = received.file.take() {
            delete_quietly(store, &file.stored.key).await;
        }
        return Receipt { permit, result: Err(error) };
    }
    Receipt { permit, result: Ok(received) }
}

/// Deletes an object whose upload is being abandoned; a failure is logged,
/// since the request already failed for another reason.
pub async fn delete_quietly(store: &dyn ObjectStore, key: &ObjectKey) {
    if let Err(e) = store.delete(key).await {
        tracing::warn!(key = %key, error = %e, "could not delete the object of a failed upload");
    }
}

/// A file part waiting in the spool for the gate to open.
struct Spooled {
    spool: Spool,
    filename: Option<String>,
}

/// The state of one [`receive`] call.
struct Run<'a, P> {
    limits: &'a MultipartLimits,
    store: &'a dyn ObjectStore,
    spool_dir: &'a Path,
    permit: Option<P>,
    received: Received,
}

impl<P: Send> Run<'_, P> {
    async fn receive<S, G>(
        &mut self,
        body: S,
        boundary: &str,
        gate: &mut G,
    ) -> Result<(), ReceiveError<G::Refusal>>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        G: FileGate<Permit = P>,
    {
        let limits = self.limits;
        let size_limit = multer::SizeLimit::new()
            .per_field(limits.max_field_bytes)
            .for_field(FILE_FIELD, limits.max_file_bytes);
        let body = limit_part_headers(
            repair_bare_delimiters(body, boundary),
            boundary,
            limits.max_part_header_bytes,
        );
        let constraints = multer::Constraints::new().size_limit(size_limit);
        let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
        let mut spooled: Option<Spooled> = None;
        while let Some(field) = multipart.next_field().await.map_err(classify)? {
            let name = field.name().unwrap_or_default().to_owned();
            if name.is_empty() {
                return Err(UploadError::Malformed("a multipart part has no field name".into()).into());
            }
            if name != FILE_FIELD {
                if self.received.fields.len() >= limits.max_fields {
                    let message = format!("more than {} form fields", limits.max_fields);
                    return Err(UploadError::TooLarge(message).into());
                }
                let bytes = field.bytes().await.map_err(classify)?;
                let value = String::from_utf8(bytes.into())
                    .map_err(|_| UploadError::Malformed(format!("field {name:?} is not UTF-8 text")))?;
                self.received.fields.push((name, value));
                continue;
            }
            if self.received.file.is_some() || spooled.is_some() {
                return Err(UploadError::Malformed("more than one file part".into()).into());
            }
            let filename = field.file_name().map(clean_filename);
            let bytes: ByteStream = Box::pin(field.map_err(std::io::Error::other));
            if self.permit.is_none() {
                match gate.open(&self.received.fields, false).await.map_err(ReceiveError::Refused)? {
                    Gate::Open(permit) => self.permit = Some(permit),
                    Gate::NotYet => {
                        let spool = Spool::fill(self.spool_dir, bytes).await.map_err(storage_error)?;
                        spooled = Some(Spooled { spool, filename });
                        continue;
                    }
                }
            }
            self.store_file(bytes, filename).await?;
        }
        if self.permit.is_none() {
            match gate.open(&self.received.fields, true).await.map_err(ReceiveError::Refused)? {
                Gate::Open(permit) => self.permit = Some(permit),
                Gate::NotYet => {
                    return Err(
                        UploadError::Malformed("the request lacks what the upload needs".into()).into()
                    );
                }
            }
        }
        if let Some(Spooled { spool, filename }) = spooled {
            let bytes = spool.drain().await.map_err(|e| UploadError::Storage(e.to_string()))?;
            self.store_file(bytes, filename).await?;
        }
        Ok(())
    }

    /// Identifies the file from its first bytes, refuses a type that is not
    /// allowed before anything is stored, and stores the rest.
    async fn store_file(&mut self, bytes: ByteStream, filename: Option<String>) -> Result<(), UploadError> {
        let (media_type, bytes) = media::sniff(bytes).await.map_err(|e| classify_io(&e))?;
        if !self.limits.allowed_media_types.allows(media_type) {
            return Err(UploadError::MediaType(media_type));
        }
        let key = ObjectKey::new_media();
        let stored = self.store.put(&key, media_type, bytes).await.map_err(storage_error)?;
        self.received.file = Some(ReceivedFile { stored, content_type: media_type.to_owned(), filename });
        Ok(())
    }
}

/// A store's failure: the source's fault (limits, client) or the store's.
fn storage_error(error: StorageError) -> UploadError {
    match error {
        StorageError::Source(source) => classify_io(&source),
        StorageError::Backend(message) => UploadError::Storage(message),
    }
}

/// Maps multer's errors (and the stream errors inside them) to ours.
fn classify(error: multer::Error) -> UploadError {
    match error {
        multer::Error::StreamReadFailed(source) => match source.downcast::<std::io::Error>() {
            Ok(io) => classify_io(&io),
            Err(other) => UploadError::Interrupted(other.to_string()),
        },
        other => classify_multer(&other),
    }
}

fn classify_multer(error: &multer::Error) -> UploadError {
    match error {
        multer::Error::FieldSizeExceeded { limit, field_name } => {
            let name = field_name.as_deref().unwrap_or_default();
            if name == FILE_FIELD {
                UploadError::FileTooLarge(*limit)
            } else {
                UploadError::TooLarge(format!("field {name:?} exceeds the limit of {limit} bytes"))
            }
        }
        multer::Error::StreamSizeExceeded { limit } => {
            UploadError::TooLarge(format!("the request body exceeds the limit of {limit} bytes"))
        }
        multer::Error::StreamReadFailed(source) => match source.downcast_ref::<std::io::Error>() {
            Some(io) => classify_io(io),
            None => UploadError::Interrupted(source.to_string()),
        },
        other => UploadError::Malformed(format!("malformed multipart body: {other}")),
    }
}

/// Errors that travelled through a byte stream as `io::Error`: an idle
/// timeout, a limit of ours, multer's own, or the connection failing.
fn classify_io(error: &std::io::Error) -> UploadError {
    if error.kind() == std::io::ErrorKind::TimedOut {
        return UploadError::Interrupted(error.to_string());
    }
    match error.get_ref() {
        Some(inner) if inner.is::<PartHeadersTooLarge>() => UploadError::TooLarge(inner.to_string()),
        Some(inner) => match inner.downcast_ref::<multer::Error>() {
            Some(multer_error) => classify_multer(multer_error),
            None => match inner.downcast_ref::<std::io::Error>() {
                Some(io) => classify_io(io),
                None => UploadError::Interrupted(error.to_string()),
            },
        },
        None => UploadError::Interrupted(error.to_string()),
    }
}

/// A client's file name reduced to something safe to display and log:
/// the last path segment, without control characters, at most 255 chars.
pub fn clean_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    last.chars().filter(|c| !c.is_control()).take(255).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\x\\a\u{0}b.jpg"), "ab.jpg");
        assert_eq!(clean_filename(&"a".repeat(300)).len(), 255);
    }
}
