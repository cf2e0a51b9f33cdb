//! The embedded store's [`ChunkedFiles`]: each step is one write
//! transaction of the group-commit writer (or one snapshot read), its slot
//! changes in the same transaction, on the rows of `chunked`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use redb::ReadableTable;

use super::EmbeddedStore;
use super::chunked::{
    FILE_CLAIM, FileRecord, StoredStage, delete_record, file_progress, get_record, keep_token, key,
    put_record, receiving, renew, view,
};
use super::tables::{
    CHUNKED_FILES, FILE_CHUNKS, LIVE_OBJECTS, LiveReservation, TOKENS, TokenState, commit_reserved, decode,
    encode, get_token_state, store_error, update_token,
};
use crate::domain::ReplaceToken;
use crate::storage::chunked::{ChunkReceipt, PartReceipt};
use crate::store::chunked::{
    AbandonedFile, Begun, Cancellation, ChunkedFile, ChunkedFiles, ChunkedTerms, FileId, FileProgress,
    Recorded, StoredChunk,
};
use crate::store::deliveries::Outbox;
use crate::store::new_reservation_id;
use crate::store::{
    CommitError, RecordedVersion, Reservation, ReserveError, StoreError, TokenKind, VersionFile,
};

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
            let reservation = new_reservation_id();
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
                abandonment_taken: false,
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
        let (id, chunk, arrivals) = (id.clone(), chunk.clone(), Arc::clone(&self.arrivals));
        self.write(move |txn| {
            let mut record = match receiving(txn, &id, now)? {
                Ok(record) => record,
                Err(answer) => return Ok(answer),
            };
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
            let chunks = txn.open_table(FILE_CHUNKS).map_err(store_error)?;
            let stored = |n: u64| Ok(chunks.get((token, identifier, n)).map_err(store_error)?.is_some());
            arrivals.settle(&id, chunk.number, &record, answer, now, stored)
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
            let mut record = match receiving(txn, &id, now)? {
                Ok(record) => record,
                Err(answer) => return Ok(answer),
            };
            if !renew(txn, &id, &mut record, now, lease_secs)? {
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
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitError> {
        let (id, reservation, outbox) = (id.clone(), reservation.id.clone(), outbox.clone());
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
            super::deliveries::write_outbox(txn, &outbox, &recorded)?;
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

    async fn files_of(&self, token: &ReplaceToken, now: u64) -> Result<Vec<FileProgress>, StoreError> {
        let token = token.clone();
        self.read(move |txn| {
            let files = txn.open_table(CHUNKED_FILES).map_err(store_error)?;
            let chunks = txn.open_table(FILE_CHUNKS).map_err(store_error)?;
            let mut found = Vec::new();
            for entry in
                files.range((token.as_str(), "")..=(token.as_str(), "\u{10ffff}")).map_err(store_error)?
            {
                let (key, bytes) = entry.map_err(store_error)?;
                let record: FileRecord = decode(bytes.value())?;
                if !matches!(record.stage, StoredStage::Receiving) || record.abandoned(now) {
                    continue;
                }
                let identifier = key.value().1.to_owned();
                let mut bytes_received = 0;
                let range = (token.as_str(), identifier.as_str(), 0)
                    ..=(token.as_str(), identifier.as_str(), u64::MAX);
                for chunk in chunks.range(range).map_err(store_error)? {
                    bytes_received += decode::<ChunkReceipt>(chunk.map_err(store_error)?.1.value())?.size;
                }
                found.push(FileProgress {
                    identifier,
                    chunks_received: record.chunks_stored,
                    total_chunks: record.chunk_count(),
                    bytes_received,
                    total_size: record.terms.object.total_size,
                });
            }
            Ok(found)
        })
        .await
    }

    async fn take_abandoned(&self, now: u64, max: usize) -> Result<Vec<AbandonedFile>, StoreError> {
        self.write(move |txn| {
            let found: Vec<((String, String), FileRecord)> = {
                let files = txn.open_table(CHUNKED_FILES).map_err(store_error)?;
                let mut found = Vec::new();
                for entry in files.iter().map_err(store_error)? {
                    let (key, bytes) = entry.map_err(store_error)?;
                    let record: FileRecord = decode(bytes.value())?;
                    if record.abandoned(now) && !record.abandonment_taken {
                        let (token, identifier) = key.value();
                        found.push(((token.to_owned(), identifier.to_owned()), record));
                        if found.len() == max {
                            break;
                        }
                    }
                }
                found
            };
            let tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let mut taken = Vec::new();
            for ((token, identifier), mut record) in found {
                record.abandonment_taken = true;
                let Ok(token) = token.parse::<ReplaceToken>() else { continue };
                let id = FileId { token, identifier };
                put_record(txn, &id, &record)?;
                if let Some(state) = get_token_state(&tokens, &id.token)? {
                    taken.push(AbandonedFile {
                        grant: state.grant,
                        identifier: id.identifier,
                        chunks_received: record.chunks_stored,
                        total_size: record.terms.object.total_size,
                    });
                }
            }
            Ok(taken)
        })
        .await
    }

    async fn arriving(&self, id: &FileId, number: u64, until: u64) -> Result<(), StoreError> {
        self.arrivals.mark(id, number, until);
        Ok(())
    }

    async fn cancel(
        &self,
        id: &FileId,
        why: &Cancellation,
        now: u64,
        lease_secs: u64,
    ) -> Result<(), StoreError> {
        let (id, stage) = (id.clone(), StoredStage::cancelled(why));
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
            record.stage = stage;
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
