//! One chunk of a file sent in chunks (Resumable.js, flow.js), on any
//! instance, in any order. The walk of a chunk:
//! 1. file: the file's record, or it is begun by this chunk (the token's
//!    slot reserved and the object's assembly started); a finished file
//!    answers its outcome (completed) or its refusal (cancelled).
//! 2. checks: the chunk agrees with what the first chunk pinned; chunk 1's
//!    type is identified, a refused one cancelling the file.
//! 3. bytes: stored at their place ([`ChunkedObjects::put_chunk`]).
//! 4. record: the state store says what follows, atomically: nothing, a
//!    part to make (its last chunk arrived), the file to complete (its last
//!    missing piece arrived), or wait (another request does that now).
//! 5. complete: the object assembled, then the version and the slot
//!    committed together, the outcome kept with the file for replays.
//!
//! A passing failure (state store, object store) is a `503` the libraries
//! retry; the work a failed request claimed passes to a later copy of the
//! chunk when its claim runs out.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::budget::reserve_refusal;
use super::chunk::Chunk;
use super::chunk_bytes::{drain, exactly, interrupted, storage_refusal, store_chunk};
use super::error::{Failure, Refusal};
use crate::context::Context;
use crate::delivery::event::Event;
use crate::delivery::outbox::Outbox;
use crate::delivery::worker;
use crate::domain::{ReplaceToken, unix_now};
use crate::storage::ByteStream;
use crate::storage::chunked::{ChunkedObjects, Sizing, combine_crc64};
use crate::store::chunked::{
    Begun, Cancellation, ChunkedFile, ChunkedTerms, FileId, ReadyFile, Recorded, Stage, StoredChunk,
};
use crate::store::{CommitError, RecordedVersion, ReserveError, TokenGrant, TokenKind, VersionFile};
use crate::upload::media::{self, UNRECOGNISED};
use crate::upload::{UploadError, clean_filename};

/// How long a chunk waits for another request that is making its part or
/// completing its file, before it is answered `503` (and sent again).
const BUSY_WAIT: Duration = Duration::from_secs(10);
/// How often it asks meanwhile.
const BUSY_POLL: Duration = Duration::from_millis(200);
/// How often a chunk waiting for its file's outcome asks (see [`outcome_soon`]).
const ARRIVAL_POLL: Duration = Duration::from_millis(50);

/// One chunk's request.
pub struct ChunkRequest {
    pub kind: TokenKind,
    pub token: String,
    pub chunk: Chunk,
    pub client: IpAddr,
    /// Its parameters (the site is given back its own).
    pub query: Vec<(String, String)>,
    pub fields: Vec<(String, String)>,
}

/// How a chunk that was not refused ended.
pub enum ChunkEnd {
    /// Stored; the file is not complete yet.
    Stored,
    File(Box<Finished>),
}

/// A complete file: by this chunk (with what its commit queued), or
/// before it (`outbox` is `None`).
pub struct Finished {
    pub grant: TokenGrant,
    pub recorded: RecordedVersion,
    pub outbox: Option<Outbox>,
}

fn finished(grant: TokenGrant, recorded: RecordedVersion, outbox: Option<Outbox>) -> ChunkEnd {
    ChunkEnd::File(Box::new(Finished { grant, recorded, outbox }))
}

/// Why a chunk did not end well.
pub enum ChunkError {
    Refused(Refusal),
    /// The file's completion failed; the site is told.
    Failed {
        grant: TokenGrant,
        cause: Failure,
    },
}

impl From<Refusal> for ChunkError {
    fn from(refusal: Refusal) -> Self {
        ChunkError::Refused(refusal)
    }
}

/// A test `GET` (the libraries' `testChunks`): is this chunk stored?
pub enum Tested {
    /// `200`: stored, and the file is not waiting for it.
    Stored,
    /// `204`: send it.
    Missing,
    /// The file is complete: its outcome again.
    Completed(Box<Finished>),
    /// Refused, or the file ended without a version.
    Ended(ChunkError),
}

/// Answers a test `GET` of `chunk`. A chunk of a file whose every chunk is
/// stored but which is not committed yet is `Missing`: sending it again
/// completes the file (or takes over a completion that died).
pub async fn test(ctx: &Context, kind: TokenKind, token: &str, chunk: &Chunk) -> Tested {
    let Ok(token) = token.parse::<ReplaceToken>() else { return Tested::Missing };
    let id = FileId { token, identifier: chunk.identifier.clone() };
    let file = match ctx.chunked.file(&id, chunk.number, unix_now()).await {
        Ok(Some(file)) if file.reservation.grant.kind() == kind => file,
        Ok(_) => return Tested::Missing,
        Err(e) => return Tested::Ended(Refusal::Unavailable(e).into()),
    };
    match file.stage {
        Stage::Completed(recorded) => {
            Tested::Completed(Box::new(Finished { grant: file.reservation.grant, recorded, outbox: None }))
        }
        Stage::Cancelled(why) => Tested::Ended(cancelled(file.reservation.grant, why)),
        // Another file under the same identifier (a visitor chose a
        // different one): none of its chunks are these.
        Stage::Receiving if pinned(&file, chunk, &Sizing::BOTH).is_err() => Tested::Missing,
        Stage::Receiving => {
            // Every chunk stored, yet not committed: the completion died.
            let count = file.terms.object.chunk_count(file.sizing);
            let all_stored = count.is_some_and(|count| file.chunks_stored >= count);
            if file.has_chunk && !all_stored { Tested::Stored } else { Tested::Missing }
        }
    }
}

/// Receives one chunk whose bytes are `body`.
pub async fn receive(
    ctx: &Context,
    request: &ChunkRequest,
    body: ByteStream,
) -> Result<ChunkEnd, ChunkError> {
    let objects = ctx.chunked_objects.as_deref().ok_or(Refusal::ChunksNotSupported)?;
    let chunk = &request.chunk;
    let size = chunk.current_size.ok_or_else(|| {
        Refusal::BadChunk(
            "the chunk's own size (resumableCurrentChunkSize or flowCurrentChunkSize) is missing".into(),
        )
    })?;
    let sizings = chunk.sizings(size);
    let implied = match sizings.as_slice() {
        [only] => Some(*only),
        _ => None,
    };
    crate::api::params::file_identifier(&chunk.identifier).map_err(Refusal::BadParameter)?;
    let Ok(token) = request.token.parse::<ReplaceToken>() else {
        return Err(reserve_refusal(ctx, request.client, ReserveError::Unknown).await.into());
    };
    let id = FileId { token, identifier: chunk.identifier.clone() };
    let now = unix_now();

    // Chunk 1 says what the file is, before anything of it is stored.
    let (media_type, body) = if chunk.number == 1 {
        let (kind, body) = media::sniff(body).await.map_err(|e| interrupted(e.to_string()))?;
        (Some(kind), body)
    } else {
        (None, body)
    };

    // 1. The file.
    let file = match ctx.chunked.file(&id, chunk.number, now).await.map_err(Refusal::Unavailable)? {
        Some(file) if file.reservation.grant.kind() == request.kind => file,
        Some(_) => return Err(reserve_refusal(ctx, request.client, ReserveError::Unknown).await.into()),
        None => begin(ctx, objects, request, &id, &object_type(ctx, chunk, media_type), now).await?,
    };
    let grant = file.reservation.grant.clone();
    match &file.stage {
        Stage::Completed(recorded) => {
            return Ok(finished(grant, recorded.clone(), None));
        }
        Stage::Cancelled(why) => return Err(cancelled(grant, why.clone())),
        Stage::Receiving => {}
    }

    // 2. The checks.
    pinned(&file, chunk, &sizings)?;
    if let Some(kind) = media_type
        && !ctx.config.limits.allowed_media_types.allows(kind)
    {
        let why = Cancellation::Refused(UploadError::MediaType(kind).to_string());
        cancel(ctx, &id, &file, &why).await;
        return Err(cancelled(grant, why));
    }

    // 3. The bytes, unless they are stored already (a chunk sent again:
    //    its request failed, or a test GET was skipped); then they are
    //    read and dropped, and the stored copy stands.
    if !file.has_chunk {
        let until = now + claim_secs(ctx);
        if let Err(e) = ctx.chunked.arriving(&id, chunk.number, until).await {
            tracing::debug!(error = %crate::causes::chain(&e), "a chunk's arrival was not noted");
        }
    }
    let receipt = if file.has_chunk {
        drain(exactly(body, size)).await?;
        None
    } else {
        match store_chunk(ctx, objects, &file, chunk.number, size, body).await {
            Ok(receipt) => Some(receipt),
            // A file of one chunk has no other to wait for: its slot goes back.
            Err(Refusal::BadChunk(message)) if chunk.is_whole_file() => {
                cancel(ctx, &id, &file, &Cancellation::Refused(message.clone())).await;
                return Err(Refusal::BadChunk(message).into());
            }
            Err(refusal) => return Err(refusal.into()),
        }
    };

    // 4. What follows.
    let stored = StoredChunk {
        number: chunk.number,
        receipt,
        sizing: implied,
        media_type: media_type.map(str::to_owned),
    };
    let recorded = record(ctx, &id, &stored).await?;
    let duplicate =
        matches!(recorded, Recorded::Stored { duplicate: true } | Recorded::Arriving { duplicate: true });
    let counted = if duplicate { "duplicate" } else { "stored" };
    ctx.metrics.chunks.with_label_values(&[counted]).inc();
    settle(ctx, objects, request, &id, &file, &stored, recorded).await
}

/// Step 1 for a file not known yet: its token checked, its assembly
/// started, then the file begun (or joined, when another chunk began it
/// meanwhile: its assembly is kept, this one's aborted).
async fn begin(
    ctx: &Context,
    objects: &dyn ChunkedObjects,
    request: &ChunkRequest,
    id: &FileId,
    content_type: &str,
    now: u64,
) -> Result<ChunkedFile, ChunkError> {
    // An unknown token starts nothing in the object store.
    let status = ctx.state.token_status(&id.token, now).await.map_err(Refusal::Unavailable)?;
    if !status.is_some_and(|s| s.grant.kind() == request.kind && s.grant.valid_until > now) {
        return Err(reserve_refusal(ctx, request.client, ReserveError::Unknown).await.into());
    }
    let chunk = &request.chunk;
    let whole = chunk.is_whole_file();
    let object = objects
        .begin(chunk.total_size, chunk.chunk_size, whole, content_type)
        .await
        .map_err(storage_refusal)?;
    let terms = ChunkedTerms {
        object,
        filename: clean_filename(&chunk.filename),
        declared_type: chunk.declared_type.clone(),
    };
    let lease = ctx.config.limits.chunked_idle_timeout_secs;
    let begun = ctx.chunked.begin(id, request.kind, &terms, chunk.number, now, lease).await;
    match begun {
        Ok(Begun::Began(file)) => {
            tracing::info!(token = ?id.token, identifier = %id.identifier, "chunked upload begun; slot reserved");
            Ok(file)
        }
        Ok(Begun::Joined(file)) => {
            abort_later(ctx, terms);
            Ok(file)
        }
        Ok(Begun::Abandoned) => {
            abort_later(ctx, terms);
            Err(Refusal::FileAbandoned(lease).into())
        }
        // The store may have recorded the file before its answer was lost:
        // the assembly is left to the sweep, which asks the store.
        Err(ReserveError::Store(e)) => Err(Refusal::Unavailable(e).into()),
        Err(refused) => {
            abort_later(ctx, terms);
            Err(reserve_refusal(ctx, request.client, refused).await.into())
        }
    }
}

/// The content type a file's object begins with: chunk 1's, or before it
/// arrives the browser's declared type when the site accepts that kind
/// (the completion puts a wrong guess right).
fn object_type(ctx: &Context, chunk: &Chunk, sniffed: Option<&str>) -> String {
    let declared = chunk.declared_type.as_str();
    let plausible = declared != UNRECOGNISED
        && media::is_media_type(declared)
        && ctx.config.limits.allowed_media_types.allows(declared);
    sniffed.unwrap_or(if plausible { declared } else { UNRECOGNISED }).to_owned()
}

/// Aborts an assembly nobody records, on a clean-up task.
fn abort_later(ctx: &Context, terms: ChunkedTerms) {
    let Some(objects) = ctx.chunked_objects.clone() else { return };
    ctx.cleanup.spawn(async move {
        if let Err(e) = objects.abort(&terms.object).await {
            tracing::warn!(key = %terms.object.key, error = %crate::causes::chain(&e), "aborting a chunked file's assembly failed; the sweep will retry");
        }
    });
}

/// Step 2: the chunk agrees with the file's first chunk.
fn pinned(
    file: &ChunkedFile,
    chunk: &Chunk,
    sizings: &[crate::storage::chunked::Sizing],
) -> Result<(), Refusal> {
    let terms = &file.terms;
    let differs = |what: &str, pinned: &dyn std::fmt::Display, given: &dyn std::fmt::Display| {
        Refusal::BadChunk(format!("its {what} ({given}) differs from the file's first chunk's ({pinned})"))
    };
    if chunk.total_size != terms.object.total_size {
        return Err(differs("total size", &terms.object.total_size, &chunk.total_size));
    }
    if chunk.chunk_size != terms.object.chunk_size {
        return Err(differs("chunk size", &terms.object.chunk_size, &chunk.chunk_size));
    }
    if clean_filename(&chunk.filename) != terms.filename {
        return Err(differs("file name", &terms.filename, &chunk.filename));
    }
    if chunk.declared_type != terms.declared_type {
        return Err(differs("type", &terms.declared_type, &chunk.declared_type));
    }
    if let Some(sizing) = file.sizing
        && !sizings.contains(&sizing)
    {
        return Err(Refusal::BadChunk(format!(
            "chunk {} does not fit the file's chunking ({} sizing)",
            chunk.number,
            sizing.as_str()
        )));
    }
    Ok(())
}

/// The answer of every chunk of a file that ended without a version.
fn cancelled(grant: TokenGrant, why: Cancellation) -> ChunkError {
    match why {
        Cancellation::Refused(message) => Refusal::FileCancelled(message).into(),
        Cancellation::Failed(message) => ChunkError::Failed { grant, cause: Failure::Told(message) },
    }
}

/// Cancels a file: its slot back, its staged bytes removed.
async fn cancel(ctx: &Context, id: &FileId, file: &ChunkedFile, why: &Cancellation) {
    let lease = ctx.config.limits.chunked_idle_timeout_secs;
    match ctx.chunked.cancel(id, why, unix_now(), lease).await {
        Ok(()) => {
            ctx.metrics.chunked_files.with_label_values(&["cancelled"]).inc();
            abort_later(ctx, file.terms.clone());
            // A failed completion's event goes with its answer.
            if let Cancellation::Refused(message) = why {
                let event = Event::failed(&file.reservation.grant, message, unix_now());
                worker::record_outcome(ctx, &id.token, event).await;
            }
        }
        // Its chunks keep being taken meanwhile: the assembly stays for
        // them, and goes with the sweep once the lease runs out.
        Err(e) => {
            tracing::warn!(error = %crate::causes::chain(&e), "cancelling a chunked file failed; its lease will run out")
        }
    }
}

/// Records a stored chunk.
async fn record(ctx: &Context, id: &FileId, stored: &StoredChunk) -> Result<Recorded, Refusal> {
    let (lease, claim) = (ctx.config.limits.chunked_idle_timeout_secs, claim_secs(ctx));
    ctx.chunked.record_chunk(id, stored, unix_now(), lease, claim).await.map_err(Refusal::Unavailable)
}

/// How long a claim on making a part or completing a file lasts: an
/// object-store call and a margin. A claim whose work failed is given up at
/// once; only a request that died holds one to its end.
fn claim_secs(ctx: &Context) -> u64 {
    ctx.config.storage.timeout_secs + 10
}

/// Gives up a claim whose work failed, so the next copy of a chunk takes
/// it (a failure to do so only makes it wait for the claim's end).
async fn release(ctx: &Context, id: &FileId, part: Option<u64>) {
    if let Err(e) = ctx.chunked.release_claim(id, part).await {
        tracing::warn!(error = %crate::causes::chain(&e), "a chunked file's claim was not given up; it runs out");
    }
}

/// Steps 4 and 5: does what the store's answer asks, until the chunk's
/// part is done with.
async fn settle(
    ctx: &Context,
    objects: &dyn ChunkedObjects,
    request: &ChunkRequest,
    id: &FileId,
    file: &ChunkedFile,
    stored: &StoredChunk,
    mut recorded: Recorded,
) -> Result<ChunkEnd, ChunkError> {
    let grant = &file.reservation.grant;
    let waiting_since = Instant::now();
    loop {
        recorded = match recorded {
            Recorded::Stored { .. } => return Ok(ChunkEnd::Stored),
            Recorded::Arriving { .. } => return outcome_soon(ctx, id, grant, stored.number).await,
            Recorded::PartReady { part, chunks } => {
                let receipt = match objects.put_part(&file.terms.object, part, &chunks).await {
                    Ok(receipt) => receipt,
                    Err(e) => {
                        release(ctx, id, Some(part)).await;
                        return Err(storage_refusal(e).into());
                    }
                };
                let (lease, claim) = (ctx.config.limits.chunked_idle_timeout_secs, claim_secs(ctx));
                ctx.chunked
                    .record_part(id, &receipt, unix_now(), lease, claim)
                    .await
                    .map_err(Refusal::Unavailable)?
            }
            Recorded::FileReady(ready) => return complete(ctx, objects, request, id, file, ready).await,
            Recorded::Busy if waiting_since.elapsed() < BUSY_WAIT => {
                tokio::time::sleep(BUSY_POLL).await;
                // This chunk is stored: recording it again finds the work
                // done, or takes it over once its claim ran out.
                record(ctx, id, stored).await?
            }
            Recorded::Busy => return Err(Refusal::StillCompleting.into()),
            Recorded::SizingConflict => {
                return Err(Refusal::BadChunk(format!(
                    "chunk {} does not fit the file's chunking",
                    stored.number
                ))
                .into());
            }
            Recorded::Cancelled(why) => return Err(cancelled(grant.clone(), why)),
            Recorded::Completed(recorded) => {
                return Ok(finished(grant.clone(), recorded, None));
            }
            Recorded::Gone => {
                return Err(Refusal::FileAbandoned(ctx.config.limits.chunked_idle_timeout_secs).into());
            }
        }
    }
}

/// A chunk stored while the file's other missing chunks are arriving: its
/// answer waits (up to [`BUSY_WAIT`]) for the file's outcome, so that the
/// last answer to reach the library, which it takes as the file's, is the
/// outcome and not an `ok` overtaken on the way. A file that does not
/// end meanwhile gets `ok`.
async fn outcome_soon(
    ctx: &Context,
    id: &FileId,
    grant: &TokenGrant,
    number: u64,
) -> Result<ChunkEnd, ChunkError> {
    let waiting_since = Instant::now();
    while waiting_since.elapsed() < BUSY_WAIT {
        tokio::time::sleep(ARRIVAL_POLL).await;
        match ctx.chunked.file(id, number, unix_now()).await {
            Ok(Some(ChunkedFile { stage: Stage::Completed(recorded), .. })) => {
                return Ok(finished(grant.clone(), recorded, None));
            }
            Ok(Some(ChunkedFile { stage: Stage::Cancelled(why), .. })) => {
                return Err(cancelled(grant.clone(), why));
            }
            Ok(Some(ChunkedFile { stage: Stage::Receiving, .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Ok(ChunkEnd::Stored)
}

/// Step 5: the object assembled, then committed with the slot.
async fn complete(
    ctx: &Context,
    objects: &dyn ChunkedObjects,
    request: &ChunkRequest,
    id: &FileId,
    file: &ChunkedFile,
    ready: ReadyFile,
) -> Result<ChunkEnd, ChunkError> {
    let grant = file.reservation.grant.clone();
    let object = &file.terms.object;
    let size: u64 = ready.chunks.iter().map(|c| c.size).sum();
    if size != object.total_size {
        let cause = format!("its chunks hold {size} bytes, not the announced {}", object.total_size);
        return Err(Refusal::BadChunk(cause).into());
    }
    let content_type = ready.media_type.unwrap_or_else(|| UNRECOGNISED.to_owned());
    if let Err(e) = objects.complete(object, &ready.parts, &content_type).await {
        release(ctx, id, None).await;
        return Err(storage_refusal(e).into());
    }
    let now = unix_now();
    let version = VersionFile {
        object_key: object.key.clone(),
        size,
        content_type,
        sha256: String::new(),
        crc64nvme: Some(format!("{:016x}", combine_crc64(&ready.chunks))),
        original_filename: Some(file.terms.filename.clone()).filter(|name| !name.is_empty()),
        created_at: now,
    };
    let keep = ctx.config.limits.chunked_idle_timeout_secs;
    let site =
        super::answer::site_return(request.kind.field(), &grant, &request.query, &request.fields, true);
    let outbox = super::answer::outbox_for(ctx, request.kind, &site, now);
    match ctx.chunked.complete(id, &file.reservation, version, now, keep, &outbox).await {
        Ok(recorded) => {
            ctx.metrics.chunked_files.with_label_values(&["completed"]).inc();
            Ok(finished(grant, recorded, Some(outbox)))
        }
        // Perhaps applied before its answer was lost: the retry tells.
        Err(CommitError::Store(e)) => {
            release(ctx, id, None).await;
            Err(Refusal::Unavailable(e).into())
        }
        Err(error) => {
            // Completed meanwhile by a request that took the claim over?
            // Only a file known not to be may lose its object.
            match ctx.chunked.file(id, 1, unix_now()).await {
                Ok(Some(ChunkedFile { stage: Stage::Completed(recorded), .. })) => {
                    return Ok(finished(grant, recorded, None));
                }
                Ok(_) => {}
                Err(e) => return Err(Refusal::Unavailable(e).into()),
            }
            let failure = Failure::Commit(error);
            cancel(ctx, id, file, &Cancellation::Failed(failure.error_message())).await;
            if let Ok(key) = object.object_key() {
                let _ = ctx.objects.delete(&key).await;
            }
            Err(ChunkError::Failed { grant, cause: failure })
        }
    }
}
