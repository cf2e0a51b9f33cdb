//! The embedded store's [`ChunkedFiles`]: a file's record, its chunks'
//! receipts (rows of their own, so recording a chunk writes two small rows
//! whatever the file's length) and an index of the object keys of files
//! being received, for the sweep. Each operation is one write transaction
//! of the group-commit writer, its slot changes in the same transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{
    LiveReservation, TOKENS, TokenState, decode, encode, get_token_state, store_error, update_token,
};
use super::{EmbeddedStore, commit_reserved};
use crate::domain::random_bytes;
use crate::storage::chunked::{ChunkReceipt, PartReceipt, Sizing};
use crate::store::chunked::{
    Begun, ChunkedFile, ChunkedFiles, ChunkedTerms, FileId, ReadyFile, Recorded, Stage, StoredChunk,
};
use crate::store::{
    CommitError, RecordedVersion, Reservation, ReserveError, StoreError, TokenKind, VersionFile,
};

/// (token, identifier) → that file's [`FileRecord`].
pub const CHUNKED_FILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("chunked_files");
/// (token, identifier, chunk number) → that chunk's [`ChunkReceipt`].
pub const FILE_CHUNKS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("chunked_file_chunks");
/// Object key of a file being received → the end of its lease.
pub const LIVE_OBJECTS: TableDefinition<&str, u64> = TableDefinition::new("chunked_live_objects");

/// The claim on a file's completion, among the parts' claims.
const FILE_CLAIM: u64 = 0;

/// A chunked file, as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct FileRecord {
    reservation_id: String,
    terms: ChunkedTerms,
    sizing: Option<Sizing>,
    media_type: Option<String>,
    chunks_stored: u64,
    /// Parts of several chunks made so far (part number → ETag).
    parts: BTreeMap<u64, Option<String>>,
    /// Part number (or [`FILE_CLAIM`]) → end of the claim on making it.
    claims: BTreeMap<u64, u64>,
    /// The end of the slot's lease (receiving), or of the record's keeping.
    deadline: u64,
    /// How long an abandoned file's record is kept after its deadline, so
    /// its later chunks are told it was abandoned.
    #[serde(default)]
    idle_secs: u64,
    stage: StoredStage,
}

#[derive(Debug, Serialize, Deserialize)]
enum StoredStage {
    Receiving,
    Cancelled { message: String },
    Completed(RecordedVersion),
}

impl FileRecord {
    fn abandoned(&self, now: u64) -> bool {
        matches!(self.stage, StoredStage::Receiving) && self.deadline <= now
    }

    /// How many chunks the file has, once its sizing is known (or when both
    /// sizings cut it into as many chunks: then they cut it the same way).
    fn chunk_count(&self) -> Option<u64> {
        let object = &self.terms.object;
        let [floor, ceil] = Sizing::BOTH.map(|s| s.chunks(object.total_size, object.chunk_size));
        match self.sizing {
            Some(sizing) => Some(sizing.chunks(object.total_size, object.chunk_size)),
            None => (floor == ceil).then_some(floor),
        }
    }

    /// Whether every chunk of `part` is stored (`stored` says of one).
    fn part_complete(
        &self,
        part: u64,
        stored: impl Fn(u64) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let object = &self.terms.object;
        let first = (part - 1) * object.chunks_per_part + 1;
        let mut last = part * object.chunks_per_part;
        match self.chunk_count() {
            Some(count) => last = last.min(count),
            // Without the sizing only parts before the last chunk of either
            // sizing are whole for sure (a chunk at or past it pins it).
            None if last >= Sizing::Floor.chunks(object.total_size, object.chunk_size) => return Ok(false),
            None => {}
        }
        for number in first..=last {
            if !stored(number)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether every part is stored.
    fn all_parts_stored(&self) -> bool {
        let Some(count) = self.chunk_count() else { return false };
        match self.terms.object.chunks_per_part {
            1 => self.chunks_stored == count,
            per_part => self.parts.len() as u64 == count.div_ceil(per_part),
        }
    }

    /// Claims `work` until `now + claim_secs`, unless a live claim holds it.
    fn claim(&mut self, work: u64, now: u64, claim_secs: u64) -> bool {
        if self.claims.get(&work).is_some_and(|until| *until > now) {
            return false;
        }
        self.claims.insert(work, now + claim_secs);
        true
    }
}

fn key(id: &FileId) -> (&str, &str) {
    (id.token.as_str(), id.identifier.as_str())
}

fn get_record(
    files: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    id: &FileId,
) -> Result<Option<FileRecord>, StoreError> {
    match files.get(key(id)).map_err(store_error)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

fn put_record(txn: &WriteTransaction, id: &FileId, record: &FileRecord) -> Result<(), StoreError> {
    let mut files = txn.open_table(CHUNKED_FILES).map_err(store_error)?;
    files.insert(key(id), encode(record).as_slice()).map_err(store_error)?;
    Ok(())
}

/// Forgets a file's record, its chunks and its index entry.
pub fn delete_record(txn: &WriteTransaction, token: &str, identifier: &str) -> Result<(), StoreError> {
    let mut files = txn.open_table(CHUNKED_FILES).map_err(store_error)?;
    if let Some(bytes) = files.remove((token, identifier)).map_err(store_error)? {
        let record: FileRecord = decode(bytes.value())?;
        txn.open_table(LIVE_OBJECTS)
            .map_err(store_error)?
            .remove(record.terms.object.key.as_str())
            .map_err(store_error)?;
    }
    let mut chunks = txn.open_table(FILE_CHUNKS).map_err(store_error)?;
    chunks
        .retain_in((token, identifier, 0)..=(token, identifier, u64::MAX), |_, _| false)
        .map_err(store_error)?;
    Ok(())
}

/// The file's view, with the token's terms.
fn view(
    tokens: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &FileId,
    record: &FileRecord,
    has_chunk: bool,
) -> Result<Option<ChunkedFile>, StoreError> {
    let Some(token) = get_token_state(tokens, &id.token)? else { return Ok(None) };
    let stage = match &record.stage {
        StoredStage::Receiving => Stage::Receiving,
        StoredStage::Cancelled { message } => Stage::Cancelled { message: message.clone() },
        StoredStage::Completed(recorded) => Stage::Completed(recorded.clone()),
    };
    Ok(Some(ChunkedFile {
        reservation: Reservation {
            grant: token.grant,
            id: record.reservation_id.clone(),
            lease_until: record.deadline,
        },
        terms: record.terms.clone(),
        sizing: record.sizing,
        media_type: record.media_type.clone(),
        chunks_stored: record.chunks_stored,
        has_chunk,
        stage,
    }))
}

/// A finished file's answer to a chunk; `None` while it is receiving.
fn settled(record: &FileRecord) -> Option<Recorded> {
    match &record.stage {
        StoredStage::Receiving => None,
        StoredStage::Cancelled { message } => Some(Recorded::Cancelled { message: message.clone() }),
        StoredStage::Completed(recorded) => Some(Recorded::Completed(recorded.clone())),
    }
}

/// Extends the file's slot lease (and its record's deadline) to `now + lease_secs`.
fn renew(
    txn: &WriteTransaction,
    id: &FileId,
    record: &mut FileRecord,
    now: u64,
    lease_secs: u64,
) -> Result<bool, StoreError> {
    let reservation = record.reservation_id.clone();
    let until = now + lease_secs;
    let live =
        update_token(txn, &id.token, false, |state| match state.live_reservation(&reservation, now) {
            Some(lease) => {
                lease.lease_until = lease.lease_until.max(until);
                Ok((true, true))
            }
            None => Ok((false, false)),
        })?;
    if live {
        record.deadline = record.deadline.max(until);
        txn.open_table(LIVE_OBJECTS)
            .map_err(store_error)?
            .insert(record.terms.object.key.as_str(), record.deadline)
            .map_err(store_error)?;
    }
    Ok(live)
}

/// Keeps the file's token at least until `until`, so a finished file can
/// answer chunks sent again as long as it is kept.
fn keep_token(txn: &WriteTransaction, id: &FileId, until: u64) -> Result<(), StoreError> {
    update_token(txn, &id.token, (), |state| {
        let changed = state.keep_until < until;
        state.keep_until = state.keep_until.max(until);
        Ok(((), changed))
    })
}

/// After a chunk or a part: claims the completion when every part is there.
fn file_progress(
    txn: &WriteTransaction,
    id: &FileId,
    record: &mut FileRecord,
    duplicate: bool,
    now: u64,
    claim_secs: u64,
) -> Result<Recorded, StoreError> {
    if !record.all_parts_stored() {
        return Ok(Recorded::Stored { duplicate });
    }
    if !record.claim(FILE_CLAIM, now, claim_secs) {
        return Ok(Recorded::Busy);
    }
    let chunks = txn.open_table(FILE_CHUNKS).map_err(store_error)?;
    let (token, identifier) = key(id);
    let mut receipts = Vec::new();
    for entry in chunks.range((token, identifier, 0)..=(token, identifier, u64::MAX)).map_err(store_error)? {
        let (_, bytes) = entry.map_err(store_error)?;
        receipts.push(decode::<ChunkReceipt>(bytes.value())?);
    }
    let parts = match record.terms.object.chunks_per_part {
        1 => (1..).zip(&receipts).map(|(number, r)| PartReceipt { number, etag: r.etag.clone() }).collect(),
        _ => record
            .parts
            .iter()
            .map(|(number, etag)| PartReceipt { number: *number, etag: etag.clone() })
            .collect(),
    };
    Ok(Recorded::FileReady(ReadyFile { chunks: receipts, parts, media_type: record.media_type.clone() }))
}

#[async_trait]
impl ChunkedFiles for EmbeddedStore {
    async fn file(&self, id: &FileId, number: u64, now: u64) -> Result<Option<ChunkedFile>, StoreError> {
        let id = id.clone();
        self.read(move |txn| {
            let files = txn.open_table(CHUNKED_FILES).map_err(store_error)?;
            let Some(record) = get_record(&files, &id)?.filter(|r| !r.abandoned(now)) else {
                return Ok(None);
            };
            let chunks = txn.open_table(FILE_CHUNKS).map_err(store_error)?;
            let has_chunk = chunks
                .get((id.token.as_str(), id.identifier.as_str(), number))
                .map_err(store_error)?
                .is_some();
            view(&txn.open_table(TOKENS).map_err(store_error)?, &id, &record, has_chunk)
        })
        .await
    }

    async fn begin(
        &self,
        id: &FileId,
        kind: TokenKind,
        terms: &ChunkedTerms,
        number: u64,
        now: u64,
        lease_secs: u64,
    ) -> Result<Begun, ReserveError> {
        let (id, terms) = (id.clone(), terms.clone());
        self.write(move |txn| {
            let existing = get_record(&txn.open_table(CHUNKED_FILES).map_err(store_error)?, &id)?;
            if existing.as_ref().is_some_and(|r| r.abandoned(now)) && number != 1 {
                return Ok(Ok(Begun::Abandoned));
            }
            if let Some(mut record) = existing.filter(|r| !r.abandoned(now)) {
                if matches!(record.stage, StoredStage::Receiving) {
                    renew(txn, &id, &mut record, now, lease_secs)?;
                    put_record(txn, &id, &record)?;
                }
                let tokens = txn.open_table(TOKENS).map_err(store_error)?;
                return Ok(view(&tokens, &id, &record, false)?
                    .map(Begun::Joined)
                    .ok_or(ReserveError::Unknown));
            }
            delete_record(txn, id.token.as_str(), &id.identifier)?;
            let reservation = hex::encode(random_bytes::<16>());
            let deadline = now + lease_secs;
            let reserved =
                update_token(txn, &id.token, Err(ReserveError::Unknown), |state: &mut TokenState| {
                    if state.grant.kind() != kind {
                        return Ok((Err(ReserveError::Unknown), false));
                    }
                    if state.grant.valid_until <= now {
                        return Ok((Err(ReserveError::Expired), false));
                    }
                    state.reservations.retain(|r| r.lease_until > now);
                    if state.committed as usize + state.reservations.len() >= state.grant.max_uploads as usize
                    {
                        return Ok((Err(ReserveError::UsedUp), false));
                    }
                    state
                        .reservations
                        .push(LiveReservation { id: reservation.clone(), lease_until: deadline });
                    Ok((Ok(()), true))
                })?;
            if let Err(refused) = reserved {
                return Ok(Err(refused));
            }
            let record = FileRecord {
                reservation_id: reservation,
                terms,
                sizing: None,
                media_type: None,
                chunks_stored: 0,
                parts: BTreeMap::new(),
                claims: BTreeMap::new(),
                deadline,
                idle_secs: lease_secs,
                stage: StoredStage::Receiving,
            };
            put_record(txn, &id, &record)?;
            txn.open_table(LIVE_OBJECTS)
                .map_err(store_error)?
                .insert(record.terms.object.key.as_str(), deadline)
                .map_err(store_error)?;
            let tokens = txn.open_table(TOKENS).map_err(store_error)?;
            Ok(view(&tokens, &id, &record, false)?.map(Begun::Began).ok_or(ReserveError::Unknown))
        })
        .await?
    }

    async fn record_chunk(
        &self,
        id: &FileId,
        chunk: &StoredChunk,
        now: u64,
        lease_secs: u64,
        claim_secs: u64,
    ) -> Result<Recorded, StoreError> {
        let (id, chunk) = (id.clone(), chunk.clone());
        self.write(move |txn| {
            let Some(mut record) = get_record(&txn.open_table(CHUNKED_FILES).map_err(store_error)?, &id)?
            else {
                return Ok(Recorded::Gone);
            };
            if let Some(settled) = settled(&record) {
                return Ok(settled);
            }
            if record.abandoned(now) {
                return Ok(Recorded::Gone);
            }
            if let (Some(pinned), Some(implied)) = (record.sizing, chunk.sizing)
                && pinned != implied
            {
                return Ok(Recorded::SizingConflict);
            }
            let (token, identifier) = key(&id);
            let stored_before = txn
                .open_table(FILE_CHUNKS)
                .map_err(store_error)?
                .get((token, identifier, chunk.number))
                .map_err(store_error)?
                .is_some();
            // A chunk said to be stored that is not: the file was begun anew since.
            if (chunk.receipt.is_none() && !stored_before) || !renew(txn, &id, &mut record, now, lease_secs)?
            {
                return Ok(Recorded::Gone);
            }
            record.sizing = record.sizing.or(chunk.sizing);
            if chunk.media_type.is_some() {
                record.media_type = chunk.media_type.clone();
            }
            let duplicate = stored_before;
            if let Some(receipt) = &chunk.receipt {
                let mut chunks = txn.open_table(FILE_CHUNKS).map_err(store_error)?;
                chunks
                    .insert((token, identifier, chunk.number), encode(receipt).as_slice())
                    .map_err(store_error)?;
            }
            if !duplicate {
                record.chunks_stored += 1;
            }
            let part = record.terms.object.part_of(chunk.number);
            let answer = if record.terms.object.chunks_per_part == 1 || record.parts.contains_key(&part) {
                file_progress(txn, &id, &mut record, duplicate, now, claim_secs)?
            } else {
                let chunks = txn.open_table(FILE_CHUNKS).map_err(store_error)?;
                let stored = |n: u64| Ok(chunks.get((token, identifier, n)).map_err(store_error)?.is_some());
                if !record.part_complete(part, stored)? {
                    Recorded::Stored { duplicate }
                } else if !record.claim(part, now, claim_secs) {
                    Recorded::Busy
                } else {
                    let per_part = record.terms.object.chunks_per_part;
                    let first = (part - 1) * per_part + 1;
                    let mut members = Vec::new();
                    for entry in chunks
                        .range((token, identifier, first)..(token, identifier, first + per_part))
                        .map_err(store_error)?
                    {
                        let (key, bytes) = entry.map_err(store_error)?;
                        members.push((key.value().2, decode(bytes.value())?));
                    }
                    Recorded::PartReady { part, chunks: members }
                }
            };
            put_record(txn, &id, &record)?;
            Ok(answer)
        })
        .await
    }

    async fn record_part(
        &self,
        id: &FileId,
        part: &PartReceipt,
        now: u64,
        lease_secs: u64,
        claim_secs: u64,
    ) -> Result<Recorded, StoreError> {
        let (id, part) = (id.clone(), part.clone());
        self.write(move |txn| {
            let Some(mut record) = get_record(&txn.open_table(CHUNKED_FILES).map_err(store_error)?, &id)?
            else {
                return Ok(Recorded::Gone);
            };
            if let Some(settled) = settled(&record) {
                return Ok(settled);
            }
            if record.abandoned(now) || !renew(txn, &id, &mut record, now, lease_secs)? {
                return Ok(Recorded::Gone);
            }
            let duplicate = record.parts.insert(part.number, part.etag).is_some();
            record.claims.remove(&part.number);
            let answer = file_progress(txn, &id, &mut record, duplicate, now, claim_secs)?;
            put_record(txn, &id, &record)?;
            Ok(answer)
        })
        .await
    }

    async fn complete(
        &self,
        id: &FileId,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
        keep_secs: u64,
    ) -> Result<RecordedVersion, CommitError> {
        let (id, reservation) = (id.clone(), reservation.id.clone());
        self.write(move |txn| {
            let Some(mut record) = get_record(&txn.open_table(CHUNKED_FILES).map_err(store_error)?, &id)?
            else {
                return Ok(Err(CommitError::LeaseLost));
            };
            if record.reservation_id != reservation {
                return Ok(Err(CommitError::LeaseLost));
            }
            let recorded =
                match commit_reserved(txn, &id.token, &reservation, version, now, Some(&id.identifier))? {
                    Ok(recorded) => recorded,
                    Err(e) => return Ok(Err(e)),
                };
            record.deadline = now + keep_secs;
            keep_token(txn, &id, record.deadline)?;
            record.stage = StoredStage::Completed(recorded.clone());
            record.claims.clear();
            txn.open_table(LIVE_OBJECTS)
                .map_err(store_error)?
                .remove(record.terms.object.key.as_str())
                .map_err(store_error)?;
            put_record(txn, &id, &record)?;
            Ok(Ok(recorded))
        })
        .await?
    }

    async fn cancel(&self, id: &FileId, message: &str, now: u64, lease_secs: u64) -> Result<(), StoreError> {
        let (id, message) = (id.clone(), message.to_owned());
        self.write(move |txn| {
            let Some(mut record) = get_record(&txn.open_table(CHUNKED_FILES).map_err(store_error)?, &id)?
            else {
                return Ok(());
            };
            if !matches!(record.stage, StoredStage::Receiving) {
                return Ok(());
            }
            let reservation = record.reservation_id.clone();
            update_token(txn, &id.token, (), |state| {
                let before = state.reservations.len();
                state.reservations.retain(|r| r.id != reservation);
                Ok(((), state.reservations.len() != before))
            })?;
            record.stage = StoredStage::Cancelled { message };
            record.deadline = now + lease_secs;
            keep_token(txn, &id, record.deadline)?;
            txn.open_table(LIVE_OBJECTS)
                .map_err(store_error)?
                .remove(record.terms.object.key.as_str())
                .map_err(store_error)?;
            put_record(txn, &id, &record)
        })
        .await
    }

    async fn release_claim(&self, id: &FileId, part: Option<u64>) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |txn| {
            let Some(mut record) = get_record(&txn.open_table(CHUNKED_FILES).map_err(store_error)?, &id)?
            else {
                return Ok(());
            };
            record.claims.remove(&part.unwrap_or(FILE_CLAIM));
            put_record(txn, &id, &record)
        })
        .await
    }

    async fn is_live(&self, object_key: &str, now: u64) -> Result<bool, StoreError> {
        let object_key = object_key.to_owned();
        self.read(move |txn| {
            let live = txn.open_table(LIVE_OBJECTS).map_err(store_error)?;
            Ok(live.get(object_key.as_str()).map_err(store_error)?.is_some_and(|until| until.value() > now))
        })
        .await
    }
}

/// Forgets files past their deadline by `now - retention` (abandoned ones,
/// and finished ones kept for replays); returns how many.
pub fn purge_files(txn: &WriteTransaction, now: u64, retention: u64) -> Result<u64, StoreError> {
    let mut stale = Vec::new();
    {
        let files = txn.open_table(CHUNKED_FILES).map_err(store_error)?;
        for entry in files.iter().map_err(store_error)? {
            let (key, bytes) = entry.map_err(store_error)?;
            let record: FileRecord = decode(bytes.value())?;
            if record.deadline + record.idle_secs + retention <= now {
                let (token, identifier) = key.value();
                stale.push((token.to_owned(), identifier.to_owned()));
            }
        }
    }
    for (token, identifier) in &stale {
        delete_record(txn, token, identifier)?;
    }
    Ok(stale.len() as u64)
}
