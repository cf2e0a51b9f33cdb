//! The `ObjectStore` contract, checked against each implementation.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use upload_receiver::storage::fs::FsObjectStore;
use upload_receiver::storage::{ByteStream, ObjectKey, ObjectStore, StorageError};

use crate::servers;

/// `total` bytes of a fixed pattern in chunks of `chunk` bytes.
fn body(total: usize, chunk: usize) -> (ByteStream, Vec<u8>) {
    let content: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        content.chunks(chunk.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    (Box::pin(futures_util::stream::iter(chunks)), content)
}

/// A body that yields `good` bytes and then fails, like a client going away.
fn failing_body(good: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(vec![1u8; good])),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client gone")),
    ];
    Box::pin(futures_util::stream::iter(chunks))
}

type Probe<T> = Box<dyn Fn() -> futures_util::future::BoxFuture<'static, T> + Send + Sync>;
type Reader =
    Box<dyn Fn(&ObjectKey) -> futures_util::future::BoxFuture<'static, Option<Vec<u8>>> + Send + Sync>;

/// A test store plus what it needs kept alive, and probes that look at the
/// backend itself (files on disk, the bucket through the S3 API).
struct Subject {
    store: Arc<dyn ObjectStore>,
    /// Objects and temporary or multipart leftovers, as names.
    leftovers: Probe<Vec<String>>,
    /// The bytes stored under a key, or `None`.
    read: Reader,
    _dir: Option<tempfile::TempDir>,
}

impl Subject {
    async fn read_all(&self, key: &ObjectKey) -> Option<Vec<u8>> {
        (self.read)(key).await
    }
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            async fn subject() -> Subject {
                $make
            }

            #[tokio::test]
            async fn sizes_around_the_part_size_round_trip_byte_for_byte() {
                let s = subject().await;
                sizes_around_the_part_size_round_trip_byte_for_byte_case(&s).await;
            }

            #[tokio::test]
            async fn a_failing_body_leaves_nothing_behind() {
                let s = subject().await;
                a_failing_body_leaves_nothing_behind_case(&s).await;
            }

            #[tokio::test]
            async fn a_dropped_put_leaves_nothing_behind() {
                let s = subject().await;
                a_dropped_put_leaves_nothing_behind_case(&s).await;
            }

            #[tokio::test]
            async fn deleting_is_idempotent_and_ping_answers() {
                let s = subject().await;
                deleting_is_idempotent_and_ping_answers_case(&s).await;
            }
        }
    };
}

/// The part size the S3 store runs with in these tests (S3's minimum).
const PART: usize = 5 * 1024 * 1024;

conformance!(local_files, {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let store: Arc<dyn ObjectStore> = Arc::new(FsObjectStore::open(&root).unwrap());
    let listed = root.clone();
    let leftovers = Box::new(move || {
        let root = listed.clone();
        Box::pin(async move { list_files(&root) }) as futures_util::future::BoxFuture<'static, Vec<String>>
    });
    let read = Box::new(move |key: &ObjectKey| {
        let path = root.join(key.as_str());
        Box::pin(async move { std::fs::read(path).ok() })
            as futures_util::future::BoxFuture<'static, Option<Vec<u8>>>
    });
    Subject { store, leftovers, read, _dir: Some(dir) }
});

conformance!(s3, {
    let (s3, bucket) = servers::s3_store(PART as u64).await;
    let listed = bucket.clone();
    let leftovers = Box::new(move || {
        let bucket = listed.clone();
        Box::pin(async move {
            let mut names = servers::s3_open_uploads(&bucket).await;
            names.extend(servers::s3_keys(&bucket).await.into_iter().map(|k| format!("object {k}")));
            names
        }) as futures_util::future::BoxFuture<'static, Vec<String>>
    });
    let read = Box::new(move |key: &ObjectKey| {
        let (bucket, key) = (bucket.clone(), key.as_str().to_owned());
        Box::pin(async move { servers::s3_object(&bucket, &key).await })
            as futures_util::future::BoxFuture<'static, Option<Vec<u8>>>
    });
    Subject { store: Arc::new(s3), leftovers, read, _dir: None }
});

fn list_files(dir: &std::path::Path) -> Vec<String> {
    crate::files::walk_files(dir).iter().map(|p| p.display().to_string()).collect()
}

/// Waits up to 5 s for the store to hold nothing: an abort started when a
/// `put` failed or was dropped may finish just after.
async fn assert_nothing_left(s: &Subject) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = (s.leftovers)().await;
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn sizes_around_the_part_size_round_trip_byte_for_byte_case(s: &Subject) {
    for (size, chunk) in
        [(0, 1), (1, 1), (PART - 1, 64 * 1024), (PART, 100_000), (PART + 1, 1 << 20), (2 * PART, 3 * PART)]
    {
        let key = ObjectKey::new_media();
        let (stream, content) = body(size, chunk);
        let stored = s.store.put(&key, "video/mp4", stream).await.unwrap();
        assert_eq!(stored.size, size as u64, "size {size}");
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&content)), "size {size}");
        assert_eq!(stored.key, key);
        assert_eq!(s.read_all(&key).await.unwrap(), content, "size {size}");
        s.store.delete(&key).await.unwrap();
    }
    assert!((s.leftovers)().await.is_empty());
}

async fn a_failing_body_leaves_nothing_behind_case(s: &Subject) {
    for good in [1000, PART + 10] {
        let key = ObjectKey::new_media();
        match s.store.put(&key, "video/mp4", failing_body(good)).await {
            Err(StorageError::Source(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            other => panic!("expected the source's error, got {other:?}"),
        }
        assert!(s.read_all(&key).await.is_none());
    }
    assert_nothing_left(s).await;
}

async fn a_dropped_put_leaves_nothing_behind_case(s: &Subject) {
    let key = ObjectKey::new_media();
    // A body that sends more than a part and then never ends.
    let endless: ByteStream = Box::pin(
        futures_util::stream::iter(vec![Ok(Bytes::from(vec![9u8; PART + 1]))])
            .chain(futures_util::stream::pending()),
    );
    let put = s.store.put(&key, "video/mp4", endless);
    assert!(tokio::time::timeout(std::time::Duration::from_secs(2), put).await.is_err());
    assert_nothing_left(s).await;
}

async fn deleting_is_idempotent_and_ping_answers_case(s: &Subject) {
    s.store.ping().await.unwrap();
    let key = ObjectKey::new_media();
    s.store.delete(&key).await.unwrap();
    let (stream, _) = body(10, 10);
    s.store.put(&key, "image/png", stream).await.unwrap();
    s.store.delete(&key).await.unwrap();
    s.store.delete(&key).await.unwrap();
    assert!(s.read_all(&key).await.is_none());
}

/// Orphaned multipart uploads (a process died mid-upload) under the
/// receiver's key space are aborted by the sweep; others are left alone.
/// (moto reports every upload as started in 2010, so this cannot show the
/// age cut-off; a unit test in `storage::s3` does.)
#[tokio::test]
async fn the_s3_sweep_aborts_orphaned_multipart_uploads_in_its_key_space() {
    let (store, bucket) = servers::s3_store(PART as u64).await;
    let client = servers::s3_client().await;
    for key in ["media/orphan-a", "media/orphan-b", "elsewhere/not-ours"] {
        client.create_multipart_upload().bucket(&bucket).key(key).send().await.unwrap();
    }
    assert_eq!(store.sweep(std::time::Duration::from_secs(3600)).await.unwrap(), 2);
    assert_eq!(servers::s3_open_uploads(&bucket).await, ["elsewhere/not-ours"]);
}
