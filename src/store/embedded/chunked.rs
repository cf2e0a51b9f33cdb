//! The embedded store's chunked files, as rows: a file's record, its
//! chunks' receipts (rows of their own, so recording a chunk writes two
//! small rows whatever the file's length) and an index of the object keys
//! of files being received, for the sweep; and the reads and writes the
//! steps of `chunked_store` (each one write transaction) make of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{
    CHUNKED_FILES, FILE_CHUNKS, LIVE_OBJECTS, decode, encode, get_token_state, store_error, update_token,
};
use crate::storage::chunked::{ChunkReceipt, PartReceipt, Sizing};
use crate::store::chunked::{Cancellation, ChunkedFile, ChunkedTerms, FileId, ReadyFile, Recorded, Stage};
use crate::store::{RecordedVersion, Reservation, StoreError};

/// The claim on a file's completion, among the parts' claims.
pub const FILE_CLAIM: u64 = 0;

/// A chunked file, as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct FileRecord {
    pub reservation_id: String,
    pub terms: ChunkedTerms,
    pub sizing: Option<Sizing>,
    pub media_type: Option<String>,
    pub chunks_stored: u64,
    /// Parts of several chunks made so far (part number → ETag).
    pub parts: BTreeMap<u64, Option<String>>,
    /// Part number (or [`FILE_CLAIM`]) → end of the claim on making it.
    pub claims: BTreeMap<u64, u64>,
    /// The end of the slot's lease (receiving), or of the record's keeping.
    pub deadline: u64,
    /// How long an abandoned file's record is kept after its deadline, so
    /// its later chunks are told it was abandoned.
    #[serde(default)]
    pub idle_secs: u64,
    pub stage: StoredStage,
    /// Its abandonment was taken for its event (see `take_abandoned`).
    #[serde(default)]
    pub abandonment_taken: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum StoredStage {
    Receiving,
    Cancelled {
        message: String,
    },
    /// Its completion failed (see [`Cancellation::Failed`]).
    Failed {
        message: String,
    },
    Completed(RecordedVersion),
}

impl StoredStage {
    pub fn cancelled(why: &Cancellation) -> Self {
        match why.clone() {
            Cancellation::Refused(message) => StoredStage::Cancelled { message },
            Cancellation::Failed(message) => StoredStage::Failed { message },
        }
    }

    /// Why the file ended without a version, if it did.
    fn cancellation(&self) -> Option<Cancellation> {
        match self {
            StoredStage::Cancelled { message } => Some(Cancellation::Refused(message.clone())),
            StoredStage::Failed { message } => Some(Cancellation::Failed(message.clone())),
            StoredStage::Receiving | StoredStage::Completed(_) => None,
        }
    }
}

impl FileRecord {
    pub fn abandoned(&self, now: u64) -> bool {
        matches!(self.stage, StoredStage::Receiving) && self.deadline <= now
    }

    /// How many chunks the file has, once that is known.
    pub fn chunk_count(&self) -> Option<u64> {
        self.terms.object.chunk_count(self.sizing)
    }

    /// Whether every chunk of `part` is stored (`stored` says of one).
    pub fn part_complete(
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
    pub fn all_parts_stored(&self) -> bool {
        let Some(count) = self.chunk_count() else { return false };
        match self.terms.object.chunks_per_part {
            1 => self.chunks_stored == count,
            per_part => self.parts.len() as u64 == count.div_ceil(per_part),
        }
    }

    /// Claims `work` until `now + claim_secs`, unless a live claim holds it.
    pub fn claim(&mut self, work: u64, now: u64, claim_secs: u64) -> bool {
        if self.claims.get(&work).is_some_and(|until| *until > now) {
            return false;
        }
        self.claims.insert(work, now + claim_secs);
        true
    }
}

pub fn key(id: &FileId) -> (&str, &str) {
    (id.token.as_str(), id.identifier.as_str())
}

pub fn get_record(
    files: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    id: &FileId,
) -> Result<Option<FileRecord>, StoreError> {
    match files.get(key(id)).map_err(store_error)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

pub fn put_record(txn: &WriteTransaction, id: &FileId, record: &FileRecord) -> Result<(), StoreError> {
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
pub fn view(
    tokens: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &FileId,
    record: &FileRecord,
    has_chunk: bool,
) -> Result<Option<ChunkedFile>, StoreError> {
    let Some(token) = get_token_state(tokens, &id.token)? else { return Ok(None) };
    let stage = match (&record.stage, record.stage.cancellation()) {
        (_, Some(why)) => Stage::Cancelled(why),
        (StoredStage::Completed(recorded), None) => Stage::Completed(recorded.clone()),
        _ => Stage::Receiving,
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

/// The record of a file being received at `now`, or the answer a chunk
/// (or part) of it gets instead: its outcome when it is finished, `Gone`
/// when there is none or it was abandoned.
pub fn receiving(
    txn: &WriteTransaction,
    id: &FileId,
    now: u64,
) -> Result<Result<FileRecord, Recorded>, StoreError> {
    let Some(record) = get_record(&txn.open_table(CHUNKED_FILES).map_err(store_error)?, id)? else {
        return Ok(Err(Recorded::Gone));
    };
    if let Some(settled) = settled(&record) {
        return Ok(Err(settled));
    }
    if record.abandoned(now) {
        return Ok(Err(Recorded::Gone));
    }
    Ok(Ok(record))
}

/// A finished file's answer to a chunk; `None` while it is receiving.
fn settled(record: &FileRecord) -> Option<Recorded> {
    match (&record.stage, record.stage.cancellation()) {
        (_, Some(why)) => Some(Recorded::Cancelled(why)),
        (StoredStage::Completed(recorded), None) => Some(Recorded::Completed(recorded.clone())),
        _ => None,
    }
}

/// Extends the file's slot lease (and its record's deadline) to `now + lease_secs`.
pub fn renew(
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
pub fn keep_token(txn: &WriteTransaction, id: &FileId, until: u64) -> Result<(), StoreError> {
    update_token(txn, &id.token, (), |state| {
        let changed = state.keep_until < until;
        state.keep_until = state.keep_until.max(until);
        Ok(((), changed))
    })
}

/// After a chunk or a part: claims the completion when every part is there.
pub fn file_progress(
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

/// The chunks requests are bringing right now, per file (see
/// [`ChunkedFiles::arriving`]). Kept in memory: one process owns the
/// embedded store, and a restart only loses hints.
#[derive(Default)]
pub struct Arrivals(Mutex<HashMap<(String, String), BTreeMap<u64, u64>>>);

impl Arrivals {
    /// Notes chunk `number`'s arrival, dropping every hint that ran out
    /// (of requests that failed, of files that ended), so the map holds
    /// only what is in flight.
    pub fn mark(&self, id: &FileId, number: u64, until: u64) {
        let now = crate::domain::unix_now();
        let mut files = self.files();
        files.retain(|_, arriving| {
            arriving.retain(|_, until| *until > now);
            !arriving.is_empty()
        });
        files.entry(owned_key(id)).or_default().insert(number, until);
    }

    /// Clears chunk `number` (recorded), then answers a chunk's `Stored`
    /// as `Arriving` when every chunk `record` still misses is arriving at
    /// `now` (`stored` tells whether a chunk is stored).
    pub fn settle(
        &self,
        id: &FileId,
        number: u64,
        record: &FileRecord,
        answer: Recorded,
        now: u64,
        stored: impl Fn(u64) -> Result<bool, StoreError>,
    ) -> Result<Recorded, StoreError> {
        let mut files = self.files();
        let key = owned_key(id);
        let coming = match files.get_mut(&key) {
            Some(arriving) => {
                arriving.remove(&number);
                arriving.retain(|_, until| *until > now);
                let mut coming = 0;
                for n in arriving.keys() {
                    coming += u64::from(!stored(*n)?);
                }
                if arriving.is_empty() {
                    files.remove(&key);
                }
                coming
            }
            None => 0,
        };
        Ok(match answer {
            Recorded::Stored { duplicate }
                if coming > 0
                    && record.chunk_count().is_some_and(|count| record.chunks_stored + coming >= count) =>
            {
                Recorded::Arriving { duplicate }
            }
            other => other,
        })
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), BTreeMap<u64, u64>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn owned_key(id: &FileId) -> (String, String) {
    (id.token.as_str().to_owned(), id.identifier.clone())
}
