//! The streaming pipeline between a multipart request body and the
//! [`ObjectStore`]. A [`Form`] reads the parts in order: text fields are
//! collected under count and size limits, and the `file` part is handed out
//! as a [`FilePart`] that streams straight from the body. When the file
//! comes before the fields it must wait for (its token, its photo id), it
//! is spooled to a bounded temporary file while the rest of the body is
//! read. [`FilePart::store`] identifies the file's type from its first
//! bytes and stores it, returning a [`StoredFile`] that deletes the object
//! again unless it is kept. Nothing here holds a whole file.

mod guard;
pub mod media;
mod spool;

pub use guard::{PartHeadersTooLarge, limit_part_headers, repair_bare_delimiters};

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};

use crate::storage::{ByteStream, ObjectKey, ObjectStore, StorageError, StoredObject};
use crate::store::VersionFile;
use crate::tasks::Cleanup;
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
    /// The object store (or the spool) failed.
    #[error(transparent)]
    Storage(StorageError),
}

/// A multipart body, read part by part.
pub struct Form {
    multipart: multer::Multipart<'static>,
    limits: MultipartLimits,
    /// Non-file fields so far, in order.
    fields: Vec<(String, String)>,
    /// Whether the file part was seen.
    has_file: bool,
}

/// The `file` part, ready to be stored.
pub struct FilePart {
    bytes: FileBytes,
    /// The client's file name, cleaned for display; never used in a key.
    filename: Option<String>,
}

enum FileBytes {
    /// Straight from the request body; the rest of the body follows it.
    Streaming(ByteStream),
    /// From the spool, the whole body having been read.
    Spooled(Spool),
}

impl Form {
    /// A form over `body`, cut at `boundary`, within `limits`.
    pub fn new<S>(body: S, boundary: &str, limits: MultipartLimits) -> Form
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let size_limit = multer::SizeLimit::new()
            .per_field(limits.max_field_bytes)
            .for_field(FILE_FIELD, limits.max_file_bytes);
        let body = limit_part_headers(
            repair_bare_delimiters(body, boundary),
            boundary,
            limits.max_part_header_bytes,
        );
        let constraints = multer::Constraints::new().size_limit(size_limit);
        let multipart = multer::Multipart::with_constraints(body, boundary.to_owned(), constraints);
        Form { multipart, limits, fields: Vec::new(), has_file: false }
    }

    /// The text fields read so far, in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// Reads text fields up to the `file` part and returns it, or `None`
    /// when the body has no file. A file that arrives before `ready` holds
    /// of the fields so far is spooled under `spool_dir` (bounded by the
    /// file limit) while the rest of the body is read.
    pub async fn read_to_file(
        &mut self,
        spool_dir: &Path,
        ready: impl Fn(&[(String, String)]) -> bool,
    ) -> Result<Option<FilePart>, UploadError> {
        let Some(field) = self.next_file().await? else { return Ok(None) };
        let filename = field.file_name().map(clean_filename);
        let bytes: ByteStream = Box::pin(field.map_err(std::io::Error::other));
        if ready(&self.fields) {
            return Ok(Some(FilePart { bytes: FileBytes::Streaming(bytes), filename }));
        }
        let spool = Spool::fill(spool_dir, bytes).await.map_err(storage_error)?;
        self.read_rest().await?;
        Ok(Some(FilePart { bytes: FileBytes::Spooled(spool), filename }))
    }

    /// Reads whatever follows the file: more text fields. A second file
    /// part is refused.
    pub async fn read_rest(&mut self) -> Result<(), UploadError> {
        match self.next_file().await? {
            None => Ok(()),
            Some(_) => Err(UploadError::Malformed("more than one file part".into())),
        }
    }

    /// Collects text fields until a file part begins or the body ends.
    async fn next_file(&mut self) -> Result<Option<multer::Field<'static>>, UploadError> {
        while let Some(field) = self.multipart.next_field().await.map_err(classify)? {
            let name = field.name().unwrap_or_default().to_owned();
            if name.is_empty() {
                return Err(UploadError::Malformed("a multipart part has no field name".into()));
            }
            if name == FILE_FIELD {
                if std::mem::replace(&mut self.has_file, true) {
                    return Err(UploadError::Malformed("more than one file part".into()));
                }
                return Ok(Some(field));
            }
            if self.fields.len() >= self.limits.max_fields {
                return Err(UploadError::TooLarge(format!(
                    "more than {} form fields",
                    self.limits.max_fields
                )));
            }
            let bytes = field.bytes().await.map_err(classify)?;
            let value = String::from_utf8(bytes.into())
                .map_err(|_| UploadError::Malformed(format!("field {name:?} is not UTF-8 text")))?;
            self.fields.push((name, value));
        }
        Ok(None)
    }
}

impl FilePart {
    /// The file's bytes (from the body, or from the spool) and the name
    /// the client gave it.
    pub async fn into_stream(self) -> Result<(ByteStream, Option<String>), UploadError> {
        let bytes = match self.bytes {
            FileBytes::Streaming(bytes) => bytes,
            FileBytes::Spooled(spool) => {
                spool.drain().await.map_err(|e| UploadError::Storage(StorageError::backend(e)))?
            }
        };
        Ok((bytes, self.filename))
    }

    /// Identifies the file from its first bytes, refuses a type `allowed`
    /// does not list before anything is stored, and stores the rest under a
    /// new key. On any error nothing remains stored.
    pub async fn store(
        self,
        objects: &Arc<dyn ObjectStore>,
        cleanup: &Cleanup,
        allowed: &MediaTypes,
    ) -> Result<StoredFile, UploadError> {
        let bytes = match self.bytes {
            FileBytes::Streaming(bytes) => bytes,
            FileBytes::Spooled(spool) => {
                spool.drain().await.map_err(|e| UploadError::Storage(StorageError::backend(e)))?
            }
        };
        let (media_type, bytes) = media::sniff(bytes).await.map_err(|e| classify_io(&e))?;
        if !allowed.allows(media_type) {
            return Err(UploadError::MediaType(media_type));
        }
        let key = ObjectKey::new_media();
        let object = objects.put(&key, media_type, bytes).await.map_err(storage_error)?;
        Ok(StoredFile {
            object,
            content_type: media_type.to_owned(),
            filename: self.filename,
            objects: Arc::clone(objects),
            cleanup: cleanup.clone(),
            kept: false,
        })
    }
}

/// A file in the object store that nothing records yet. Unless it is
/// [kept](StoredFile::keep) it is deleted again: by
/// [`StoredFile::discard`], or, when dropped on a path that cannot wait
/// (a request cut), by a clean-up task.
pub struct StoredFile {
    object: StoredObject,
    /// The media type identified from the file's first bytes (never the
    /// type the client declared).
    content_type: String,
    filename: Option<String>,
    objects: Arc<dyn ObjectStore>,
    cleanup: Cleanup,
    kept: bool,
}

impl StoredFile {
    /// What the state store records of this file as a photo version.
    pub fn version(&self, created_at: u64) -> VersionFile {
        VersionFile {
            object_key: self.object.key.to_string(),
            size: self.object.size,
            content_type: self.content_type.clone(),
            sha256: self.object.sha256.clone(),
            crc64nvme: None,
            original_filename: self.filename.clone(),
            created_at,
        }
    }

    /// The file is recorded: it stays.
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// Deletes the file now. A failure is logged, since the request already
    /// failed for another reason.
    pub async fn discard(mut self) {
        self.kept = true;
        delete_quietly(&*self.objects, &self.object.key).await;
    }
}

impl Drop for StoredFile {
    fn drop(&mut self) {
        if !self.kept {
            let (objects, key) = (Arc::clone(&self.objects), self.object.key.clone());
            self.cleanup.spawn(async move { delete_quietly(&*objects, &key).await });
        }
    }
}

async fn delete_quietly(objects: &dyn ObjectStore, key: &ObjectKey) {
    if let Err(e) = objects.delete(key).await {
        tracing::warn!(key = %key, error = %crate::causes::chain(&e), "could not delete the object of a failed upload");
    }
}

/// A store's failure: the source's fault (limits, client) or the store's.
pub fn storage_error(error: StorageError) -> UploadError {
    match error {
        StorageError::Source(source) => classify_io(&source),
        backend => UploadError::Storage(backend),
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

    use crate::storage::memory::MemoryObjectStore;

    fn limits() -> MultipartLimits {
        MultipartLimits {
            max_file_bytes: 1024,
            max_fields: 8,
            max_field_bytes: 64,
            max_part_header_bytes: 256,
        }
    }

    fn any_type() -> MediaTypes {
        MediaTypes::parse(&["*/*".to_owned()]).unwrap()
    }

    /// A form over `body`, arriving in chunks of `chunk` bytes.
    fn form(body: &str, chunk: usize) -> Form {
        let chunks: Vec<std::io::Result<Bytes>> =
            body.as_bytes().chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Form::new(futures_util::stream::iter(chunks), "B", limits())
    }

    fn part(name: &str, value: &str) -> String {
        format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    }

    fn file_part(content: &str) -> String {
        format!(
            "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n{content}\r\n"
        )
    }

    fn memory() -> (Arc<MemoryObjectStore>, Arc<dyn ObjectStore>) {
        let memory = Arc::new(MemoryObjectStore::default());
        let objects: Arc<dyn ObjectStore> = memory.clone();
        (memory, objects)
    }

    fn has_token(fields: &[(String, String)]) -> bool {
        fields.iter().any(|(name, _)| name == "token")
    }

    #[tokio::test]
    async fn a_file_before_the_field_it_waits_for_is_spooled_then_stored_whole() {
        let (memory, objects) = memory();
        let spool = tempfile::tempdir().unwrap();
        let body = format!("{}{}--B--\r\n", file_part("hello, world"), part("token", "t"));
        let mut form = form(&body, 7);
        let file = form.read_to_file(spool.path(), has_token).await.unwrap().expect("a file");
        assert_eq!(form.fields(), [("token".to_owned(), "t".to_owned())], "the body was read past the file");
        let stored = file.store(&objects, &Cleanup::default(), &any_type()).await.unwrap();
        form.read_rest().await.unwrap();
        let version = stored.version(1);
        let key = ObjectKey::parse(&version.object_key).unwrap();
        assert_eq!(memory.bytes(&key).as_deref(), Some(&b"hello, world"[..]));
        assert_eq!(version.size, 12);
        assert_eq!(version.original_filename.as_deref(), Some("a.bin"));
        stored.keep();
        assert_eq!(memory.len(), 1, "a kept file stays");
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "the spool file is gone");
    }

    #[tokio::test]
    async fn a_second_file_part_is_refused_after_the_first_was_stored_and_discard_deletes_it() {
        let (memory, objects) = memory();
        let body = format!("{}{}{}--B--\r\n", part("token", "t"), file_part("one"), file_part("two"));
        let mut form = form(&body, 5);
        let file = form.read_to_file(Path::new("/nonexistent"), has_token).await.unwrap().unwrap();
        let stored = file.store(&objects, &Cleanup::default(), &any_type()).await.unwrap();
        assert_eq!(memory.len(), 1);
        assert!(matches!(form.read_rest().await, Err(UploadError::Malformed(_))));
        stored.discard().await;
        assert!(memory.is_empty());
    }

    #[tokio::test]
    async fn a_stored_file_dropped_unkept_is_deleted_by_the_cleanup_tasks() {
        let (memory, objects) = memory();
        let cleanup = Cleanup::default();
        let mut form = form(&format!("{}--B--\r\n", file_part("abandoned")), 64);
        let file = form.read_to_file(Path::new("/nonexistent"), |_| true).await.unwrap().unwrap();
        drop(file.store(&objects, &cleanup, &any_type()).await.unwrap());
        assert_eq!(cleanup.finish(std::time::Duration::from_secs(5)).await, 0);
        assert!(memory.is_empty(), "the cut upload's object was deleted");
    }

    #[tokio::test]
    async fn a_file_of_a_refused_type_stores_nothing() {
        let (memory, objects) = memory();
        let mut form = form(&format!("{}--B--\r\n", file_part("<html>not a photo</html>")), 64);
        let file = form.read_to_file(Path::new("/nonexistent"), |_| true).await.unwrap().unwrap();
        let images = MediaTypes::parse(&["image/*".to_owned()]).unwrap();
        let refused = file.store(&objects, &Cleanup::default(), &images).await;
        assert!(matches!(refused, Err(UploadError::MediaType(_))));
        assert!(memory.is_empty());
    }

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\x\\a\u{0}b.jpg"), "ab.jpg");
        assert_eq!(clean_filename(&"a".repeat(300)).len(), 255);
    }
}
