//! Files sent in chunks (Resumable.js, flow.js): how a file is cut, where
//! its chunks gather until the last one arrives, and the
//! [`ChunkedObjects`] seam a backend implements for them.
//!
//! # Layout of a file
//! Both libraries cut a file the same way: `max(floor(size / chunk), 1)`
//! chunks, the last one holding the rest (1× to 2× the chunk size), or
//! with `forceChunkSize`, `ceil(size / chunk)` chunks, the last one
//! smaller ([`Sizing`]). Chunk `n` starts at `(n - 1) × chunk` either way,
//! so a chunk can be stored at its offset before the sizing is known.
//!
//! # Parts
//! The object is assembled from *parts* of consecutive chunks:
//! [`ChunkedObject::chunks_per_part`] of them (the last part takes what is
//! left). Local files and S3 chunks of at least S3's minimum part size have
//! one chunk per part, stored in place as it arrives; smaller S3 chunks are
//! staged as objects of their own until their part is complete, then
//! copied into one part ([`ChunkedObjects::put_part`]). The state store
//! records which chunks and parts are stored, and decides, atomically,
//! which request makes a part and which completes the file.
//!
//! # Checksum
//! Each chunk's CRC-64/NVME (the checksum S3 computes by default) is taken
//! while its bytes pass; the whole object's is combined from them in order
//! ([`combine_crc64`]), so completing a file never reads it back.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{ByteStream, ObjectKey, StorageError};

/// S3's smallest part (all but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest part number.
pub const MAX_PARTS: u64 = 10_000;

/// How the library cut the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sizing {
    /// The default: `max(floor(total / chunk), 1)` chunks, the last one 1×–2×.
    Floor,
    /// `forceChunkSize`: `ceil(total / chunk)` chunks, the last one smaller.
    Ceil,
}

impl Sizing {
    pub const BOTH: [Sizing; 2] = [Sizing::Floor, Sizing::Ceil];

    /// How many chunks a file of `total` bytes has in chunks of `chunk`.
    pub fn chunks(self, total: u64, chunk: u64) -> u64 {
        match self {
            Sizing::Floor => (total / chunk).max(1),
            Sizing::Ceil => total.div_ceil(chunk).max(1),
        }
    }

    /// The size chunk `number` of the file must have; `None` past the last.
    pub fn size_of(self, number: u64, total: u64, chunk: u64) -> Option<u64> {
        let count = self.chunks(total, chunk);
        if number == 0 || number > count {
            return None;
        }
        let start = (number - 1).checked_mul(chunk)?;
        Some(if number == count { total - start } else { chunk })
    }

    /// The sizings under which chunk `number` of `size` bytes fits: both,
    /// one (the chunk pins the file's sizing), or none (it cannot be).
    pub fn fitting(number: u64, size: u64, total: u64, chunk: u64) -> Vec<Sizing> {
        Sizing::BOTH.into_iter().filter(|s| s.size_of(number, total, chunk) == Some(size)).collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sizing::Floor => "floor",
            Sizing::Ceil => "ceil",
        }
    }

    pub fn parse(text: &str) -> Option<Sizing> {
        Sizing::BOTH.into_iter().find(|s| s.as_str() == text)
    }
}

/// Where a chunked file's bytes gather, as its backend planned it when the
/// file's first chunk arrived. Recorded in the state store with the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkedObject {
    /// The key the complete object will have ([`ObjectKey::new_chunked_media`]).
    pub key: String,
    pub total_size: u64,
    pub chunk_size: u64,
    /// Consecutive chunks per part (the last part takes what is left).
    pub chunks_per_part: u64,
    /// The backend's handle on the assembly (an S3 multipart upload id;
    /// none for a file of one chunk, stored whole under its key).
    pub upload_id: Option<String>,
    /// The object's type, for a file of one chunk stored whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl ChunkedObject {
    /// The part chunk `number` belongs to (from 1).
    pub fn part_of(&self, number: u64) -> u64 {
        (number - 1) / self.chunks_per_part + 1
    }

    /// How many chunks the file has under `sizing`, once it is known; or
    /// with the sizing unknown, when both cut the file into as many chunks
    /// (then they cut it alike).
    pub fn chunk_count(&self, sizing: Option<Sizing>) -> Option<u64> {
        let [floor, ceil] = Sizing::BOTH.map(|s| s.chunks(self.total_size, self.chunk_size));
        match sizing {
            Some(sizing) => Some(sizing.chunks(self.total_size, self.chunk_size)),
            None => (floor == ceil).then_some(floor),
        }
    }

    /// Where chunk `number` starts.
    pub fn offset_of(&self, number: u64) -> u64 {
        (number - 1) * self.chunk_size
    }

    pub fn object_key(&self) -> Result<ObjectKey, StorageError> {
        ObjectKey::parse(&self.key).map_err(StorageError::backend)
    }
}

/// What storing one chunk produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReceipt {
    pub size: u64,
    /// CRC-64/NVME of the chunk's bytes.
    pub crc64: u64,
    /// The S3 part's ETag, when the chunk is a part of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// One part of an assembled object, for its completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    pub number: u64,
    pub etag: Option<String>,
}

/// The whole object's CRC-64/NVME from its chunks' (in order).
pub fn combine_crc64(chunks: &[ChunkReceipt]) -> u64 {
    let mut chunks = chunks.iter();
    let Some(first) = chunks.next() else { return crc64(&[]) };
    chunks.fold(first.crc64, |crc, next| {
        crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64Nvme, crc, next.crc64, next.size)
    })
}

/// CRC-64/NVME of `bytes`.
pub fn crc64(bytes: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, bytes)
}

/// A running CRC-64/NVME and size of the bytes passing through.
pub struct Crc64 {
    digest: crc_fast::Digest,
    size: u64,
}

impl Default for Crc64 {
    fn default() -> Self {
        Crc64 { digest: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme), size: 0 }
    }
}

impl Crc64 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn receipt(&self, etag: Option<String>) -> ChunkReceipt {
        ChunkReceipt { size: self.size, crc64: self.digest.finalize(), etag }
    }
}

/// Tells the sweep whether a chunked file is still being received.
#[async_trait]
pub trait LiveFiles: Send + Sync {
    async fn is_live(&self, key: &ObjectKey) -> Result<bool, StorageError>;
}

/// What a backend does for chunked files. Every method may be called on
/// any instance, for any file, concurrently with the others; the state
/// store decides who calls [`put_part`](Self::put_part) and
/// [`complete`](Self::complete), once each (or again after a crash).
#[async_trait]
pub trait ChunkedObjects: Send + Sync {
    /// Plans a file of `total_size` bytes in chunks of `chunk_size` under a
    /// fresh key and starts its assembly; `whole`: the file is one chunk.
    /// `content_type` is the object's, where the backend records one.
    async fn begin(
        &self,
        total_size: u64,
        chunk_size: u64,
        whole: bool,
        content_type: &str,
    ) -> Result<ChunkedObject, StorageError>;

    /// Stores chunk `number` of `size` bytes from `body` (the caller makes
    /// sure it holds no more) and returns its size and checksum. Storing a
    /// chunk again replaces it. On error nothing of this chunk counts.
    async fn put_chunk(
        &self,
        file: &ChunkedObject,
        number: u64,
        size: u64,
        body: ByteStream,
    ) -> Result<ChunkReceipt, StorageError>;

    /// Makes part `part` of the chunks staged for it (`chunks`, in order,
    /// numbered), and removes the staged copies. Only called when a part
    /// holds more than one chunk.
    async fn put_part(
        &self,
        file: &ChunkedObject,
        part: u64,
        chunks: &[(u64, ChunkReceipt)],
    ) -> Result<PartReceipt, StorageError>;

    /// Assembles the object from its parts (in order) under its key, with
    /// `content_type` (what chunk 1 showed) where the backend records one
    /// (it may have begun with a guess). Calling it again once it succeeded
    /// succeeds.
    async fn complete(
        &self,
        file: &ChunkedObject,
        parts: &[PartReceipt],
        content_type: &str,
    ) -> Result<(), StorageError>;

    /// Removes everything stored of an unfinished file.
    async fn abort(&self, file: &ChunkedObject) -> Result<(), StorageError>;

    /// Removes the leftovers of chunked files that `live` no longer knows,
    /// older than `grace`; returns how many files it cleaned up.
    async fn sweep_chunked(&self, grace: Duration, live: &dyn LiveFiles) -> Result<usize, StorageError>;
}

/// How many chunks go in one part: one where chunks are parts already,
/// else enough for S3's minimum part and to stay within its part count.
pub fn chunks_per_part(total_size: u64, chunk_size: u64, min_part: u64) -> u64 {
    let chunks = Sizing::Ceil.chunks(total_size, chunk_size);
    let for_size = min_part.div_ceil(chunk_size).max(1);
    for_size.max(chunks.div_ceil(MAX_PARTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn both_sizings_are_the_libraries_arithmetic() {
        // 3.5 MiB in 1 MiB chunks: floor gives 3 (the last 1.5 MiB), ceil 4 (the last 0.5 MiB).
        let total = 3 * MIB + MIB / 2;
        assert_eq!((Sizing::Floor.chunks(total, MIB), Sizing::Ceil.chunks(total, MIB)), (3, 4));
        assert_eq!(Sizing::fitting(1, MIB, total, MIB), Sizing::BOTH);
        assert_eq!(Sizing::fitting(3, MIB + MIB / 2, total, MIB), [Sizing::Floor]);
        assert_eq!(Sizing::fitting(3, MIB, total, MIB), [Sizing::Ceil]);
        assert_eq!(Sizing::fitting(4, MIB / 2, total, MIB), [Sizing::Ceil]);
        assert!(Sizing::fitting(4, MIB, total, MIB).is_empty());
        assert!(Sizing::fitting(2, MIB - 1, total, MIB).is_empty());
        // A multiple of the chunk size: both sizings agree on every chunk.
        assert_eq!(Sizing::fitting(3, MIB, 3 * MIB, MIB), Sizing::BOTH);
    }

    #[test]
    fn a_files_crc_combines_from_its_chunks() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks: Vec<ChunkReceipt> = bytes
            .chunks(30_000)
            .map(|chunk| ChunkReceipt { size: chunk.len() as u64, crc64: crc64(chunk), etag: None })
            .collect();
        assert_eq!(combine_crc64(&chunks), crc64(&bytes));
        // The check value of the algorithm's catalogue entry.
        assert_eq!(crc64(b"123456789"), 0xae8b_1486_0a79_9888);
    }

    #[test]
    fn parts_hold_at_least_the_minimum_and_stay_within_the_part_count() {
        assert_eq!(chunks_per_part(100 * MIB, 8 * MIB, MIN_PART_BYTES), 1);
        assert_eq!(chunks_per_part(100 * MIB, MIB, MIN_PART_BYTES), 5);
        assert_eq!(chunks_per_part(100 * MIB, 2 * MIB, MIN_PART_BYTES), 3);
        // 20,000 chunks of 8 MiB: 10,000 parts of two.
        assert_eq!(chunks_per_part(20_000 * 8 * MIB, 8 * MIB, MIN_PART_BYTES), 2);
    }
}
