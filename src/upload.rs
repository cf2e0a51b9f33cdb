//! The streaming pipeline between a multipart request body and the
//! [`ObjectStore`]: multer parses the body as it arrives, the `file` part goes
//! straight into the store chunk by chunk, and the other fields are collected
//! under count and size limits. Nothing here holds a whole file.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http_body_util::BodyExt;

use crate::storage::{ByteStream, ObjectKey, ObjectStore, StorageError, StoredObject};

/// The name of the multipart part that carries the file.
pub const FILE_FIELD: &str = "file";

/// Bounds on one multipart body. See `[limits]` in the configuration.
#[derive(Clone, Debug)]
pub struct MultipartLimits {
    pub max_file_bytes: u64,
    pub max_fields: usize,
    pub max_field_bytes: u64,
    pub idle_timeout: Duration,
}

/// Why a multipart body could not be received.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body is not valid multipart, or a field breaks a rule.
    #[error("{0}")]
    Malformed(String),
    /// A size or count limit was crossed; the rest of the body is not read.
    #[error("{0}")]
    TooLarge(String),
    /// The client stopped sending (idle timeout) or went away.
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    /// The object store failed.
    #[error("{0}")]
    Storage(String),
}

/// The file part, stored.
#[derive(Debug)]
pub struct ReceivedFile {
    pub stored: StoredObject,
    /// The essence (`type/subtype`) of the part's declared type.
    pub content_type: String,
    /// The client's file name, cleaned for display; never used in a key.
    pub filename: Option<String>,
}

/// A received multipart body.
#[derive(Debug, Default)]
pub struct Received {
    /// Non-file fields, in order.
    pub fields: Vec<(String, String)>,
    pub file: Option<ReceivedFile>,
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

/// Puts back the CRLF that RFC 2046 requires before each delimiter when a
/// client leaves it out.
///
/// 23's Ruby sample client builds its multipart body by hand and writes
/// `value--BOUNDARY` where `value\r\n--BOUNDARY` belongs; the original
/// service accepted such bodies. A `--BOUNDARY` that is not at the start of
/// the body and not preceded by CRLF gets one inserted; a well-formed body
/// passes through unchanged (its delimiters all follow a CRLF), and so does
/// content, unless it contains the boundary string itself, which no
/// well-behaved client allows.
pub fn repair_bare_delimiters<S>(
    body: S,
    boundary: &str,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let delimiter = format!("--{boundary}").into_bytes();
    let state = DelimiterRepair { delimiter, held: Vec::new(), last_two: [0; 2], emitted: 0 };
    futures_util::stream::unfold((Box::pin(body), Some(state)), |(mut body, state)| async move {
        let mut state = state?;
        match body.next().await {
            Some(Ok(chunk)) => {
                let out = state.push(&chunk);
                Some((Ok(out), (body, Some(state))))
            }
            Some(Err(e)) => Some((Err(e), (body, None))),
            None => {
                let rest = Bytes::from(std::mem::take(&mut state.held));
                Some((Ok(rest), (body, None)))
            }
        }
    })
    .try_filter(|chunk| std::future::ready(!chunk.is_empty()))
}

struct DelimiterRepair {
    delimiter: Vec<u8>,
    /// The tail of the data seen so far that could be the start of a
    /// delimiter split across chunks; shorter than the delimiter.
    held: Vec<u8>,
    /// The last two bytes already passed on.
    last_two: [u8; 2],
    /// How many bytes of the original body were passed on.
    emitted: u64,
}

impl DelimiterRepair {
    fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        let keep = (self.delimiter.len() - 1).min(data.len());
        let ready = data.len() - keep;
        let mut out = Vec::with_capacity(ready + 16);
        let mut copied = 0;
        for at in memchr::memmem::find_iter(&data, &self.delimiter) {
            if at >= ready {
                break;
            }
            let before = |back: usize| -> u8 {
                if at >= back { data[at - back] } else { self.last_two[2 - (back - at)] }
            };
            let at_body_start = self.emitted == 0 && at == 0;
            let follows_crlf = before(2) == b'\r' && before(1) == b'\n';
            if !(at_body_start || follows_crlf) {
                out.extend_from_slice(&data[copied..at]);
                out.extend_from_slice(b"\r\n");
                copied = at;
            }
        }
        out.extend_from_slice(&data[copied..ready]);
        self.emitted += ready as u64;
        match ready {
            0 => {}
            1 => self.last_two = [self.last_two[1], data[0]],
            _ => self.last_two = [data[ready - 2], data[ready - 1]],
        }
        self.held = data.split_off(ready);
        Bytes::from(out)
    }
}

/// Receives a multipart body: stores its `file` part in `store` as it
/// arrives and collects the other fields. On any error, an object already
/// stored is deleted again, so a failed request leaves nothing behind.
pub async fn receive<S>(
    body: S,
    boundary: &str,
    limits: &MultipartLimits,
    store: &dyn ObjectStore,
) -> Result<Received, UploadError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut received = Received::default();
    let outcome = receive_into(body, boundary, limits, store, &mut received).await;
    if let Err(error) = outcome {
        if let Some(file) = received.file.take() {
            delete_quietly(store, &file.stored.key).await;
        }
        return Err(error);
    }
    Ok(received)
}

/// Deletes an object whose upload is being abandoned; a failure is logged,
/// since the request already failed for another reason.
pub async fn delete_quietly(store: &dyn ObjectStore, key: &ObjectKey) {
    if let Err(e) = store.delete(key).await {
        tracing::warn!(key = %key, error = %e, "could not delete the object of a failed upload");
    }
}

async fn receive_into<S>(
    body: S,
    boundary: &str,
    limits: &MultipartLimits,
    store: &dyn ObjectStore,
    received: &mut Received,
) -> Result<(), UploadError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let size_limit = multer::SizeLimit::new()
        .per_field(limits.max_field_bytes)
        .for_field(FILE_FIELD, limits.max_file_bytes);
    let body = repair_bare_delimiters(body, boundary);
    let mut multipart = multer::Multipart::with_constraints(
        body,
        boundary,
        multer::Constraints::new().size_limit(size_limit),
    );
    while let Some(field) = multipart.next_field().await.map_err(classify)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(UploadError::Malformed("a multipart part has no field name".into()));
        }
        if name == FILE_FIELD {
            if received.file.is_some() {
                return Err(UploadError::Malformed("more than one file part".into()));
            }
            let content_type = field
                .content_type()
                .map(|m| m.essence_str().to_owned())
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            let filename = field.file_name().map(clean_filename);
            let key = ObjectKey::new_media();
            let bytes: ByteStream = Box::pin(field.map_err(std::io::Error::other));
            let stored = store.put(&key, &content_type, bytes).await.map_err(|e| match e {
                StorageError::Source(source) => classify_io(&source),
                StorageError::Backend(message) => UploadError::Storage(message),
            })?;
            received.file = Some(ReceivedFile { stored, content_type, filename });
        } else {
            if received.fields.len() >= limits.max_fields {
                return Err(UploadError::TooLarge(format!("more than {} form fields", limits.max_fields)));
            }
            let bytes = field.bytes().await.map_err(classify)?;
            let value = String::from_utf8(bytes.to_vec())
                .map_err(|_| UploadError::Malformed(format!("field {name:?} is not UTF-8 text")))?;
            received.fields.push((name, value));
        }
    }
    Ok(())
}

/// Maps multer's errors (and the stream errors inside them) to ours.
fn classify(error: multer::Error) -> UploadError {
    match error {
        multer::Error::FieldSizeExceeded { limit, field_name } => UploadError::TooLarge(format!(
            "field {:?} exceeds the limit of {limit} bytes",
            field_name.unwrap_or_default()
        )),
        multer::Error::StreamSizeExceeded { limit } => {
            UploadError::TooLarge(format!("the request body exceeds the limit of {limit} bytes"))
        }
        multer::Error::StreamReadFailed(source) => match source.downcast::<std::io::Error>() {
            Ok(io) => classify_io(&io),
            Err(other) => UploadError::Interrupted(other.to_string()),
        },
        other => UploadError::Malformed(format!("malformed multipart body: {other}")),
    }
}

/// Errors that travelled through a byte stream as `io::Error`.
fn classify_io(error: &std::io::Error) -> UploadError {
    if error.kind() == std::io::ErrorKind::TimedOut {
        return UploadError::Interrupted(error.to_string());
    }
    let inner = error.get_ref().and_then(|e| e.downcast_ref::<multer::Error>());
    match inner {
        Some(multer::Error::FieldSizeExceeded { limit, .. }) => {
            UploadError::TooLarge(format!("the file exceeds the limit of {limit} bytes"))
        }
        Some(multer::Error::StreamReadFailed(source)) => match source.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::TimedOut => UploadError::Interrupted(io.to_string()),
            _ => UploadError::Interrupted(source.to_string()),
        },
        Some(multer::Error::StreamSizeExceeded { limit }) => {
            UploadError::TooLarge(format!("the request body exceeds the limit of {limit} bytes"))
        }
        Some(other) => UploadError::Malformed(format!("malformed multipart body: {other}")),
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

    async fn repaired(chunks: &[&[u8]], boundary: &str) -> Vec<u8> {
        let owned: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let stream = repair_bare_delimiters(futures_util::stream::iter(owned), boundary);
        let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
        parts.concat()
    }

    #[tokio::test]
    async fn well_formed_bodies_pass_through_unchanged_in_any_chunking() {
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv--X\r\n--XY--\r\n";
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(repaired(&[a, b], "XY").await, body.to_vec(), "split at {split}");
        }
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(repaired(&bytewise, "XY").await, body.to_vec());
    }

    #[tokio::test]
    async fn a_missing_crlf_before_a_delimiter_is_put_back_in_any_chunking() {
        let bare =
            b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue--XY\r\nrest\n--XY--\r\n\r\n";
        let fixed = b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n--XY\r\nrest\n\r\n--XY--\r\n\r\n";
        for split in 0..bare.len() {
            let (a, b) = bare.split_at(split);
            assert_eq!(repaired(&[a, b], "XY").await, fixed.to_vec(), "split at {split}");
        }
        let bytewise: Vec<&[u8]> = bare.chunks(1).collect();
        assert_eq!(repaired(&bytewise, "XY").await, fixed.to_vec());
    }

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\x\\a\u{0}b.jpg"), "ab.jpg");
        assert_eq!(clean_filename(&"a".repeat(300)).len(), 255);
    }
}
