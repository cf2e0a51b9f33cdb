//! Files sent in chunks, in the state store: the [`ChunkedFiles`] seam.
//!
//! A file is a token and the library's identifier ([`FileId`]); two
//! visitors' files may share an identifier, never a token. Its first chunk
//! *begins* it: one upload slot of the token is reserved (its lease lasts
//! `limits.chunked_idle_timeout_secs` from the latest chunk) together with
//! the file's record, which pins its terms. Each chunk stored is then
//! *recorded*; the store, in one atomic step, tells the one request whose
//! chunk completed a part (of several chunks) to make that part, and the one
//! request whose chunk or part completed the file to complete it. Those
//! claims are leased too: a request that dies holding one leaves the work to
//! the next copy of a chunk (the libraries resend a chunk whose request
//! failed). Completing commits the version and the slot together and keeps
//! the outcome with the file, so a chunk sent again after that gets it
//! again. A file nobody sends chunks to is abandoned when its lease runs
//! out: the slot returns to the token, and the object store's sweep asks
//! [`ChunkedFiles::is_live`] before it removes the staged bytes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{CommitError, RecordedVersion, Reservation, ReserveError, StoreError, TokenKind, VersionFile};
use crate::domain::ReplaceToken;
use crate::storage::chunked::{ChunkReceipt, ChunkedObject, PartReceipt, Sizing};
use crate::store::deliveries::Outbox;

/// A chunked file: a token's uploads under one identifier.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub token: ReplaceToken,
    pub identifier: String,
}

/// What a file's first chunk fixed, and where its bytes gather.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkedTerms {
    pub object: ChunkedObject,
    /// The file name the library gave, for display only.
    pub filename: String,
    /// The type the library declared (`resumableType`; may be empty). The
    /// version records the type identified from chunk 1.
    pub declared_type: String,
}

/// How a chunked file stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedFile {
    /// The file's upload slot (and the token's terms).
    pub reservation: Reservation,
    pub terms: ChunkedTerms,
    /// Unknown until a chunk only one sizing allows arrives.
    pub sizing: Option<Sizing>,
    /// Identified from chunk 1, once it is stored.
    pub media_type: Option<String>,
    pub chunks_stored: u64,
    /// Whether the chunk the read asked about is stored.
    pub has_chunk: bool,
    pub stage: Stage,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    Receiving,
    /// Ended without a version; every later chunk gets the same answer.
    Cancelled(Cancellation),
    Completed(RecordedVersion),
}

/// Why a file ended without a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancellation {
    /// Refused before it was complete (its type): a permanent refusal.
    Refused(String),
    /// Its completion failed (the photo gone, its slot's lease lost): the
    /// failure outcome the site was told, told again without a second call.
    Failed(String),
}

impl Cancellation {
    pub fn message(&self) -> &str {
        match self {
            Cancellation::Refused(message) | Cancellation::Failed(message) => message,
        }
    }
}

/// How far a file being received has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProgress {
    pub identifier: String,
    pub chunks_received: u64,
    /// Known once a chunk pinned the file's sizing.
    pub total_chunks: Option<u64>,
    pub bytes_received: u64,
    pub total_size: u64,
}

/// A file abandoned (see [`ChunkedFiles::take_abandoned`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbandonedFile {
    pub grant: super::TokenGrant,
    pub identifier: String,
    pub chunks_received: u64,
    pub total_size: u64,
}

/// What [`ChunkedFiles::begin`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begun {
    /// A new file, with a slot reserved for it: the caller's terms.
    Began(ChunkedFile),
    /// The file existed (another chunk began it): its terms, not the
    /// caller's. A receiving file's lease was renewed.
    Joined(ChunkedFile),
    /// The file was abandoned (no chunk for its idle time) and this chunk
    /// is not its first: the chunks before it are gone, so it cannot
    /// complete. Its chunk 1 begins it anew.
    Abandoned,
}

/// What one stored chunk tells the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    pub number: u64,
    /// `None`: the chunk was stored before (the request found it so and
    /// stored nothing); its receipt stands.
    pub receipt: Option<ChunkReceipt>,
    /// The sizing the chunk's size implies, if only one allows it.
    pub sizing: Option<Sizing>,
    /// Chunk 1's identified media type.
    pub media_type: Option<String>,
}

/// What recording a chunk (or a part) means for its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored (`duplicate`: it had been already); nothing else to do here.
    Stored {
        duplicate: bool,
    },
    /// This chunk completed a part of several chunks: the caller makes it.
    PartReady {
        part: u64,
        chunks: Vec<(u64, ChunkReceipt)>,
    },
    /// Every part is stored: the caller completes the file.
    FileReady(ReadyFile),
    /// Another request is making this chunk's part or completing the file
    /// right now; ask again shortly.
    Busy,
    /// The chunk's size implies a sizing other than the one the file's
    /// earlier chunks pinned.
    SizingConflict,
    /// Stored, and every chunk still missing is being received right now
    /// (see [`ChunkedFiles::arriving`]): the file should complete shortly.
    Arriving {
        duplicate: bool,
    },
    Cancelled(Cancellation),
    Completed(RecordedVersion),
    /// No such file any more: abandoned (or never begun).
    Gone,
}

/// A file whose every part is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyFile {
    /// Every chunk, in order.
    pub chunks: Vec<ChunkReceipt>,
    pub parts: Vec<PartReceipt>,
    pub media_type: Option<String>,
}

/// Chunked files in the state store. Each method is atomic on its own, as
/// everything in [`super::StateStore`].
#[async_trait]
pub trait ChunkedFiles: Send + Sync {
    /// The file, if it is known and not abandoned at `now`; `has_chunk`
    /// says whether chunk `number` is stored.
    async fn file(&self, id: &FileId, number: u64, now: u64) -> Result<Option<ChunkedFile>, StoreError>;

    /// Begins the file with `terms`, reserving a slot of its token (as
    /// [`super::StateStore::reserve_slot`] does, leased for `lease_secs`),
    /// or joins the file that exists, renewing its lease. An abandoned file
    /// (kept for another `lease_secs` after its lease ran out) is begun
    /// anew by its chunk 1 (`number`); another chunk of it is `Abandoned`.
    async fn begin(
        &self,
        id: &FileId,
        kind: TokenKind,
        terms: &ChunkedTerms,
        number: u64,
        now: u64,
        lease_secs: u64,
    ) -> Result<Begun, ReserveError>;

    /// Records a stored chunk and renews the file's lease; for a chunk that
    /// completes a part or the file, claims that work for `claim_secs`.
    async fn record_chunk(
        &self,
        id: &FileId,
        chunk: &StoredChunk,
        now: u64,
        lease_secs: u64,
        claim_secs: u64,
    ) -> Result<Recorded, StoreError>;

    /// Records a part made of several chunks; claims the file's completion
    /// when it was the last part.
    async fn record_part(
        &self,
        id: &FileId,
        part: &PartReceipt,
        now: u64,
        lease_secs: u64,
        claim_secs: u64,
    ) -> Result<Recorded, StoreError>;

    /// Gives up a claim this request holds (its work failed), so the next
    /// copy of a chunk takes it at once: part `part`'s, or (`None`) the
    /// file's completion.
    async fn release_claim(&self, id: &FileId, part: Option<u64>) -> Result<(), StoreError>;

    /// Commits the file's slot with its version (as
    /// [`super::StateStore::commit_version`], the identifier naming the
    /// file's own metadata) and keeps the outcome with the file for
    /// `keep_secs`, for chunks sent again; `outbox` as a commit's.
    async fn complete(
        &self,
        id: &FileId,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
        keep_secs: u64,
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitError>;

    /// Notes that a request brings chunk `number` until `until` (its claim
    /// on nothing: only a hint). A chunk recorded while every other missing
    /// chunk is arriving is answered [`Recorded::Arriving`], so that its
    /// request can wait for the file's outcome: a library takes the answer
    /// that reaches it last as the file's. Recording the chunk clears it.
    async fn arriving(&self, id: &FileId, number: u64, until: u64) -> Result<(), StoreError>;

    /// Cancels a receiving file: its slot goes back, and it answers
    /// `why` from now on (for `lease_secs`).
    async fn cancel(
        &self,
        id: &FileId,
        why: &Cancellation,
        now: u64,
        lease_secs: u64,
    ) -> Result<(), StoreError>;

    /// The files of `token` being received at `now` (not abandoned), for
    /// its status.
    async fn files_of(&self, token: &ReplaceToken, now: u64) -> Result<Vec<FileProgress>, StoreError>;

    /// Files whose lease ran out by `now` (abandoned: no chunk for their
    /// idle time), at most `max`, each returned once whichever instance
    /// asks: for their `upload.abandoned` event.
    async fn take_abandoned(&self, now: u64, max: usize) -> Result<Vec<AbandonedFile>, StoreError>;

    /// Whether a file being received (not abandoned at `now`) gathers its
    /// bytes under `object_key`.
    async fn is_live(&self, object_key: &str, now: u64) -> Result<bool, StoreError>;
}
