//! The Redis store's [`ChunkedFiles`]: every step is one call of
//! `lua/chunked.lua` (which describes the keys), the completion one call
//! of the commit scripts that also marks the file. Chunk bytes never pass
//! through Redis: only their receipts (size, checksum, ETag).

use async_trait::async_trait;

use super::{ChunkedCommit, RedisStore, Resend, decode, encode, store_error};
use crate::domain::{ReplaceToken, unix_now};
use crate::storage::chunked::{ChunkReceipt, PartReceipt, Sizing};
use crate::store::chunked::{
    AbandonedFile, Begun, Cancellation, ChunkedFile, ChunkedFiles, ChunkedTerms, FileId, FileProgress,
    ReadyFile, Recorded, Stage, StoredChunk,
};
use crate::store::deliveries::Outbox;
use crate::store::{
    CommitError, EXPIRED_TOKEN_RETENTION_SECS, PhotoRecord, RecordedVersion, Reservation, ReserveError,
    StoreError, TokenKind, VersionFile, new_reservation_id,
};

impl RedisStore {
    /// Runs one step of `chunked.lua` for file `id`.
    async fn chunked_step(
        &self,
        id: &FileId,
        step: &str,
        now: u64,
        args: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let [token, leases] = self.keys.token(&id.token);
        let keys = [self.keys.chunked_file(&id.token, &id.identifier), token, leases];
        let mut all = vec![step.to_owned(), now.to_string(), self.keys.prefix.clone()];
        all.extend_from_slice(args);
        self.run(&self.scripts.chunked, &keys, &all).await
    }
}

/// A completed file's outcome, from its record and version JSON.
fn recorded(record: &str, version: &str) -> Result<RecordedVersion, StoreError> {
    Ok(decode::<PhotoRecord>(record)?.recorded(decode(version)?))
}

/// Reads the script's view of a file (see `view` in `chunked.lua`).
fn file_view(answer: &[String]) -> Result<ChunkedFile, StoreError> {
    let [_, grant, terms, rid, sizing, media, n, deadline, stage, message, record, version, has] = answer
    else {
        return Err(store_error(format!("unexpected chunked file view {answer:?}")));
    };
    let number =
        |text: &str| text.parse::<u64>().map_err(|_| store_error(format!("not a number in redis: {text:?}")));
    let stage = match stage.as_str() {
        "receiving" => Stage::Receiving,
        "cancelled" => Stage::Cancelled(Cancellation::Refused(message.clone())),
        "failed" => Stage::Cancelled(Cancellation::Failed(message.clone())),
        "completed" => Stage::Completed(recorded(record, version)?),
        other => return Err(store_error(format!("unknown chunked file stage {other:?}"))),
    };
    let deadline = number(deadline)?;
    Ok(ChunkedFile {
        reservation: Reservation { grant: decode(grant)?, id: rid.clone(), lease_until: deadline },
        terms: decode::<ChunkedTerms>(terms)?,
        sizing: Sizing::parse(sizing),
        media_type: Some(media.clone()).filter(|m| !m.is_empty()),
        chunks_stored: number(n)?,
        has_chunk: has == "1",
        stage,
    })
}

/// Reads the answer of a `chunk` or `part` step.
fn recorded_answer(answer: &[String]) -> Result<Recorded, StoreError> {
    let status = answer.first().map(String::as_str);
    Ok(match (status, &answer[answer.len().min(1)..]) {
        (Some("stored"), [duplicate]) => Recorded::Stored { duplicate: duplicate == "1" },
        (Some("arriving"), [duplicate]) => Recorded::Arriving { duplicate: duplicate == "1" },
        (Some("busy"), []) => Recorded::Busy,
        (Some("gone"), []) => Recorded::Gone,
        (Some("sizing_conflict"), []) => Recorded::SizingConflict,
        (Some("cancelled"), [message]) => Recorded::Cancelled(Cancellation::Refused(message.clone())),
        (Some("failed"), [message]) => Recorded::Cancelled(Cancellation::Failed(message.clone())),
        (Some("completed"), [record, version]) => Recorded::Completed(recorded(record, version)?),
        (Some("part_ready"), [part, members @ ..]) => {
            let part = part.parse().map_err(store_error)?;
            let chunks = members
                .chunks(2)
                .map(|pair| match pair {
                    [n, receipt] => Ok((n.parse().map_err(store_error)?, decode::<ChunkReceipt>(receipt)?)),
                    _ => Err(store_error("odd part members")),
                })
                .collect::<Result<_, StoreError>>()?;
            Recorded::PartReady { part, chunks }
        }
        (Some("file_ready"), [media, fields @ ..]) => {
            let mut chunks = Vec::new();
            let mut parts = Vec::new();
            for pair in fields.chunks(2) {
                let [name, value] = pair else { return Err(store_error("odd receipt fields")) };
                let number = |prefix: &str| name.strip_prefix(prefix).and_then(|n| n.parse::<u64>().ok());
                if let Some(n) = number("c:") {
                    chunks.push((n, decode::<ChunkReceipt>(value)?));
                } else if number("p:").is_some() {
                    parts.push(decode::<PartReceipt>(value)?);
                }
            }
            chunks.sort_by_key(|(n, _)| *n);
            parts.sort_by_key(|p| p.number);
            if parts.is_empty() {
                // One chunk per part: the chunks are the parts.
                parts = chunks
                    .iter()
                    .map(|(number, r)| PartReceipt { number: *number, etag: r.etag.clone() })
                    .collect();
            }
            let chunks = chunks.into_iter().map(|(_, r)| r).collect();
            Recorded::FileReady(ReadyFile {
                chunks,
                parts,
                media_type: Some(media.clone()).filter(|m| !m.is_empty()),
            })
        }
        _ => return Err(store_error(format!("unexpected chunk answer {answer:?}"))),
    })
}

#[async_trait]
impl ChunkedFiles for RedisStore {
    async fn file(&self, id: &FileId, number: u64, now: u64) -> Result<Option<ChunkedFile>, StoreError> {
        let answer = self.chunked_step(id, "file", now, &[number.to_string()]).await?;
        match answer.first().map(String::as_str) {
            Some("none") => Ok(None),
            _ => file_view(&answer).map(Some),
        }
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
        let reservation = new_reservation_id();
        let args = [
            (now + lease_secs).to_string(),
            reservation.clone(),
            EXPIRED_TOKEN_RETENTION_SECS.to_string(),
            kind.as_str().to_owned(),
            encode(terms),
            terms.object.key.clone(),
            number.to_string(),
            id.identifier.clone(),
            id.token.as_str().to_owned(),
        ];
        let answer = self.chunked_step(id, "begin", now, &args).await?;
        match answer.first().map(String::as_str) {
            Some("began") => Ok(Begun::Began(file_view(&answer)?)),
            Some("joined") => {
                let file = file_view(&answer)?;
                // Begun by this very call, sent again after its connection dropped.
                if file.reservation.id == reservation {
                    Ok(Begun::Began(file))
                } else {
                    Ok(Begun::Joined(file))
                }
            }
            Some("abandoned") => Ok(Begun::Abandoned),
            Some("unknown" | "none") => Err(ReserveError::Unknown),
            Some("expired") => Err(ReserveError::Expired),
            Some("used_up") => Err(ReserveError::UsedUp),
            _ => Err(store_error(format!("unexpected begin answer {answer:?}")).into()),
        }
    }

    async fn record_chunk(
        &self,
        id: &FileId,
        chunk: &StoredChunk,
        now: u64,
        lease_secs: u64,
        claim_secs: u64,
    ) -> Result<Recorded, StoreError> {
        let args = [
            (now + lease_secs).to_string(),
            (now + claim_secs).to_string(),
            EXPIRED_TOKEN_RETENTION_SECS.to_string(),
            chunk.number.to_string(),
            chunk.receipt.as_ref().map(encode).unwrap_or_default(),
            chunk.sizing.map(Sizing::as_str).unwrap_or_default().to_owned(),
            chunk.media_type.clone().unwrap_or_default(),
        ];
        recorded_answer(&self.chunked_step(id, "chunk", now, &args).await?)
    }

    async fn record_part(
        &self,
        id: &FileId,
        part: &PartReceipt,
        now: u64,
        lease_secs: u64,
        claim_secs: u64,
    ) -> Result<Recorded, StoreError> {
        let args = [
            (now + lease_secs).to_string(),
            (now + claim_secs).to_string(),
            EXPIRED_TOKEN_RETENTION_SECS.to_string(),
            part.number.to_string(),
            encode(part),
        ];
        recorded_answer(&self.chunked_step(id, "part", now, &args).await?)
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
        let chunked = ChunkedCommit {
            file_key: self.keys.chunked_file(&id.token, &id.identifier),
            keep_until: now + keep_secs,
        };
        self.commit_reserved(reservation, version, now, Some(&id.identifier), Some(&chunked), outbox).await
    }

    async fn release_claim(&self, id: &FileId, part: Option<u64>) -> Result<(), StoreError> {
        let work = part.unwrap_or(0).to_string();
        self.chunked_step(id, "release", unix_now(), &[work]).await.map(drop)
    }

    async fn arriving(&self, id: &FileId, number: u64, until: u64) -> Result<(), StoreError> {
        self.chunked_step(id, "arrive", unix_now(), &[number.to_string(), until.to_string()]).await.map(drop)
    }

    async fn cancel(
        &self,
        id: &FileId,
        why: &Cancellation,
        now: u64,
        lease_secs: u64,
    ) -> Result<(), StoreError> {
        let stage = match why {
            Cancellation::Refused(_) => "cancelled",
            Cancellation::Failed(_) => "failed",
        };
        let args = [
            (now + lease_secs).to_string(),
            EXPIRED_TOKEN_RETENTION_SECS.to_string(),
            why.message().to_owned(),
            stage.to_owned(),
        ];
        self.chunked_step(id, "cancel", now, &args).await.map(drop)
    }

    async fn files_of(&self, token: &ReplaceToken, now: u64) -> Result<Vec<FileProgress>, StoreError> {
        let [hash, leases] = self.keys.token(token);
        let files = format!("{hash}:files");
        let identifiers: Vec<String> =
            self.bounded(Resend::IfDropped, redis::cmd("SMEMBERS").arg(&files)).await?;
        let mut args = vec!["progress".to_owned(), now.to_string(), self.keys.prefix.clone()];
        for identifier in &identifiers {
            args.extend([self.keys.chunked_file(token, identifier), identifier.clone()]);
        }
        let found: Vec<String> =
            self.run(&self.scripts.chunked, &[String::new(), hash, leases], &args).await?;
        found
            .chunks(5)
            .map(|entry| {
                let [identifier, n, sizing, terms, bytes] = entry else {
                    return Err(store_error(format!("unexpected file progress {entry:?}")));
                };
                let number = |text: &str| text.parse::<u64>().map_err(store_error);
                let terms: ChunkedTerms = decode(terms)?;
                Ok(FileProgress {
                    identifier: identifier.clone(),
                    chunks_received: number(n)?,
                    total_chunks: terms.object.chunk_count(Sizing::parse(sizing)),
                    bytes_received: number(bytes)?,
                    total_size: terms.object.total_size,
                })
            })
            .collect()
    }

    async fn take_abandoned(&self, now: u64, max: usize) -> Result<Vec<AbandonedFile>, StoreError> {
        let args = ["abandoned".to_owned(), now.to_string(), self.keys.prefix.clone(), max.to_string()];
        let found: Vec<String> =
            // Never sent again: a first run that took the files would leave none.
            self.run_once(&self.scripts.chunked, &[String::new(), String::new(), String::new()], &args).await?;
        found
            .chunks(4)
            .map(|entry| {
                let [grant, identifier, n, terms] = entry else {
                    return Err(store_error(format!("unexpected abandoned file {entry:?}")));
                };
                Ok(AbandonedFile {
                    grant: decode(grant)?,
                    identifier: identifier.clone(),
                    chunks_received: n.parse().map_err(store_error)?,
                    total_size: decode::<ChunkedTerms>(terms)?.object.total_size,
                })
            })
            .collect()
    }

    async fn is_live(&self, object_key: &str, _now: u64) -> Result<bool, StoreError> {
        let exists: bool = self
            .bounded(Resend::IfDropped, redis::cmd("EXISTS").arg(self.keys.live_object(object_key)))
            .await?;
        Ok(exists)
    }
}
