//! The Redis [`StateStore`], for many instances behind a load balancer.
//!
//! Each operation is one Lua script (run by SHA, loaded again when the
//! server has forgotten it), one command, or one `MULTI` block, so each is
//! atomic on its own and costs one round trip. A redeem therefore needs one
//! call to reserve its slot and one to commit it: the commit checks the
//! lease, consumes it and appends the version to the photo in one script,
//! so a slot is spent if and only if its version is recorded, whatever
//! crashes. An upload token's commit creates the photo in its script the
//! same way, and its metadata updates change the token and its photos in
//! one script (Redis's own `cjson` merges the JSON records). These
//! scripts touch a token and photos together, so the store
//! needs one Redis primary (standalone, or a replicated service reached
//! through its primary endpoint), not a Redis Cluster. Keys live under a configurable prefix;
//! token keys expire with their token.
//!
//! # Timeouts
//! Connecting and every command are bounded by `state.redis_timeout_secs`.
//! A command that timed out is reported as an error, never sent again: a
//! resend could apply it twice.

mod calls;
mod chunked;
mod deliveries;
mod keys;
mod scripts;

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use calls::{Call, Resend};
use keys::Keys;
use scripts::Scripts;

use super::{
    CommitError, EXPIRED_TOKEN_RETENTION_SECS, MetadataUpdate, NewPhoto, NonceKey, Photo, PhotoRecord,
    PhotoVersion, Purged, RecordedVersion, Reservation, ReserveError, StateStore, StoreError, TokenGrant,
    TokenKind, TokenPurpose, TokenStatus, TokenUpdate, VersionFile,
};
use crate::domain::{PhotoId, PhotoSecret, ReplaceToken, unix_micros};
use crate::store::deliveries::EVENTS_KEPT;
use crate::store::deliveries::{Outbox, SETTLED_RETENTION_SECS};

/// The Redis state store.
pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    /// Connected on first use, so the process starts (and `/readyz` says
    /// why it is not ready) while Redis is down.
    connection: OnceCell<ConnectionManager>,
    keys: Keys,
    scripts: Scripts,
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(format!("redis: {e}"))
}

fn decode<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::new(format!("corrupt record in redis: {e}")))
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("state records always serialize")
}

impl RedisStore {
    /// A store for `url` (not connected yet); keys start with `prefix`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(store_error)?;
        Ok(RedisStore {
            client,
            timeout,
            connection: OnceCell::new(),
            keys: Keys { prefix: prefix.to_owned() },
            scripts: Scripts::new(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    self.timeout,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                .map_err(|_| store_error("connecting timed out"))?
                .map_err(store_error)
            })
            .await?;
        Ok(connection.clone())
    }

    /// Makes one Redis call within the timeout. A call that times out is
    /// reported, never sent again (a resend could apply it twice). A call
    /// `resend` allows is made once more, within the same time, when it
    /// failed because its connection had been dropped (Redis restarted or
    /// failed over since the last call): the connection manager has begun
    /// a new connection, which the second call waits for.
    async fn bounded<T: redis::FromRedisValue + Send>(
        &self,
        resend: Resend,
        call: &impl Call,
    ) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let attempt = || async {
            let mut connection = self.connection().await?;
            tokio::time::timeout_at(deadline, call.send(&mut connection))
                .await
                .map_err(|_| store_error("timed out"))
        };
        match attempt().await? {
            Err(e) if resend == Resend::IfDropped && e.is_connection_dropped() => {
                tracing::info!(error = %e, "the Redis connection was dropped; the call is made on a new one");
                attempt().await?.map_err(store_error)
            }
            result => result.map_err(store_error),
        }
    }

    /// Runs a script (its load included) as [`Self::bounded`] does.
    async fn run<T: redis::FromRedisValue + Send>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        self.run_with(Resend::IfDropped, script, keys, args).await
    }

    /// [`Self::run`] for a script that must never run twice (a commit:
    /// whether it was applied is found out otherwise).
    async fn run_once<T: redis::FromRedisValue + Send>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        self.run_with(Resend::Never, script, keys, args).await
    }

    async fn run_with<T: redis::FromRedisValue + Send>(
        &self,
        resend: Resend,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        self.bounded(resend, &invocation).await
    }

    fn photo_from_parts(meta: &str, versions: &[String]) -> Result<Photo, StoreError> {
        let meta: PhotoRecord = decode(meta)?;
        let versions = versions.iter().map(|v| decode::<PhotoVersion>(v)).collect::<Result<Vec<_>, _>>()?;
        if versions.is_empty() {
            return Err(StoreError::new(format!("photo {} has no versions in redis", meta.photo_id)));
        }
        Ok(meta.with_versions(versions))
    }

    /// Runs `create_from_token.lua`: consumes the reservation of an upload
    /// token and creates the photo, in one script.
    async fn create_from_token(
        &self,
        reservation: &Reservation,
        version: &VersionFile,
        now: u64,
        file: Option<&str>,
        chunked: Option<&ChunkedCommit>,
        outbox: String,
    ) -> Result<RecordedVersion, CommitError> {
        let TokenPurpose::Upload { upload } = &reservation.grant.purpose else {
            return Err(store_error("a replace token creates no photo").into());
        };
        let tree_id = &upload.tree_id;
        // The record's id and metadata are the script's to fill in.
        let record = serde_json::json!({
            "tree_id": tree_id,
            "token": PhotoSecret::generate().as_str(),
            "created_at": version.created_at,
        });
        let mut keys = self.keys.token(&reservation.grant.token).to_vec();
        keys.push(self.keys.photo_sequence());
        let mut args = vec![
            now.to_string(),
            reservation.id.clone(),
            record.to_string(),
            encode(version),
            file.unwrap_or_default().to_owned(),
            self.keys.prefix.clone(),
        ];
        match chunked {
            Some(chunked) => {
                keys.push(chunked.file_key.clone());
                args.extend([chunked.keep_until.to_string(), EXPIRED_TOKEN_RETENTION_SECS.to_string()]);
            }
            None => args.extend([String::new(), String::new()]),
        }
        args.push(outbox);
        let answer: Vec<String> = self.run_once(&self.scripts.create_from_token, &keys, &args).await?;
        match answer.as_slice() {
            [status, record, version] if status == "ok" => {
                Ok(decode::<PhotoRecord>(record)?.recorded(decode(version)?))
            }
            [status] if status == "lease_lost" => Err(CommitError::LeaseLost),
            [status] if status == "corrupt" => {
                Err(store_error("upload token without its metadata in redis (nothing written)").into())
            }
            other => Err(store_error(format!("unexpected commit answer {other:?}")).into()),
        }
    }

    /// Runs `append_version.lua`: appends `version` to the photo, consuming
    /// `commit`'s reservation (its `(now, reservation)`) in the same script.
    async fn append(
        &self,
        photo_id: PhotoId,
        version: &VersionFile,
        commit: Option<(u64, &Reservation, String)>,
        chunked: Option<&ChunkedCommit>,
    ) -> Result<Result<RecordedVersion, CommitError>, StoreError> {
        let mut keys = self.keys.photo(photo_id).to_vec();
        let mut args = vec![encode(version)];
        if let Some((now, reservation, _)) = &commit {
            keys.extend(self.keys.token(&reservation.grant.token));
            args.extend([now.to_string(), reservation.id.clone()]);
        }
        match chunked {
            Some(chunked) => {
                keys.push(chunked.file_key.clone());
                args.extend([
                    chunked.keep_until.to_string(),
                    EXPIRED_TOKEN_RETENTION_SECS.to_string(),
                    self.keys.prefix.clone(),
                ]);
            }
            // (A plain append has no arguments past its version.)
            None if commit.is_some() => args.extend([String::new(), String::new(), String::new()]),
            None => {}
        }
        if let Some((_, _, outbox)) = commit {
            args.push(outbox);
        }
        let answer: Vec<String> = self.run_once(&self.scripts.append_version, &keys, &args).await?;
        match answer.split_first() {
            Some((status, rest)) if status == "ok" => {
                let [record, version] = rest else {
                    return Err(store_error("append answered without the photo and its new version"));
                };
                Ok(Ok(decode::<PhotoRecord>(record)?.recorded(decode(version)?)))
            }
            Some((status, _)) if status == "lease_lost" => Ok(Err(CommitError::LeaseLost)),
            Some((status, _)) if status == "no_photo" => Ok(Err(CommitError::NoSuchPhoto)),
            other => Err(store_error(format!("unexpected append answer {other:?}"))),
        }
    }
}

/// The chunked file a commit completes: its hash, kept until `keep_until`.
struct ChunkedCommit {
    file_key: String,
    keep_until: u64,
}

impl RedisStore {
    /// Commits a reservation (see [`StateStore::commit_version`]), marking
    /// `chunked`'s file completed in the same script.
    async fn commit_reserved(
        &self,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
        file: Option<&str>,
        chunked: Option<&ChunkedCommit>,
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitError> {
        let outbox = self.outbox_argument(&reservation.grant, outbox);
        match &reservation.grant.purpose {
            TokenPurpose::Replace { photo_id } => {
                self.append(*photo_id, &version, Some((now, reservation, outbox)), chunked).await?
            }
            TokenPurpose::Upload { .. } => {
                self.create_from_token(reservation, &version, now, file, chunked, outbox).await
            }
        }
    }

    /// The commit scripts' outbox argument (see `lua/outbox.lua`).
    fn outbox_argument(&self, grant: &TokenGrant, outbox: &Outbox) -> String {
        if outbox.is_empty() {
            return String::new();
        }
        let token = grant.token.as_str();
        let mut entries = Vec::new();
        if let Some(event) = &outbox.event {
            entries.push(serde_json::json!({
                "kind": "event", "json": encode(event), "order": unix_micros(), "kept": EVENTS_KEPT,
                "keep_until": grant.valid_until + EXPIRED_TOKEN_RETENTION_SECS, "token": token,
            }));
        }
        for (delivery, due) in &outbox.deliveries {
            entries.push(serde_json::json!({
                "kind": "delivery", "id": delivery.id, "json": encode(delivery), "due": due,
                "created": delivery.created_at,
                "keep_until": (*due).max(delivery.retry_until) + SETTLED_RETENTION_SECS, "token": token,
            }));
        }
        serde_json::json!({ "prefix": self.keys.prefix, "entries": entries }).to_string()
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn create_photo(&self, new: NewPhoto) -> Result<Photo, StoreError> {
        // A crash between taking the id and storing the photo only skips an id.
        let id: u64 =
            self.bounded(Resend::IfDropped, redis::cmd("INCR").arg(self.keys.photo_sequence())).await?;
        let meta = PhotoRecord {
            photo_id: PhotoId(id),
            tree_id: new.tree_id,
            token: PhotoSecret::generate(),
            metadata: new.metadata,
            created_at: new.first_version.created_at,
        };
        let args = [encode(&meta), encode(&new.first_version)];
        let _: i64 =
            self.run_once(&self.scripts.create_photo, &self.keys.photo(meta.photo_id), &args).await?;
        Ok(meta.with_versions(vec![PhotoVersion { number: 1, file: new.first_version }]))
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        let [meta, versions] = self.keys.photo(id);
        // One MULTI block: the meta and the versions of one snapshot.
        let (meta, versions): (Option<String>, Vec<String>) =
            self.bounded(Resend::IfDropped, redis::pipe().atomic().get(meta).lrange(versions, 0, -1)).await?;
        meta.map(|meta| Self::photo_from_parts(&meta, &versions)).transpose()
    }

    async fn issue_token(&self, grant: TokenGrant) -> Result<bool, StoreError> {
        let mut keys = self.keys.token(&grant.token).to_vec();
        let mut args = vec![
            encode(&grant),
            grant.max_uploads.to_string(),
            grant.valid_until.to_string(),
            (grant.valid_until + EXPIRED_TOKEN_RETENTION_SECS).to_string(),
            grant.kind().as_str().to_owned(),
        ];
        match &grant.purpose {
            TokenPurpose::Replace { photo_id } => {
                let [photo_meta, _] = self.keys.photo(*photo_id);
                keys.push(photo_meta);
            }
            TokenPurpose::Upload { upload } => args.push(encode(&upload.metadata)),
        }
        let issued: i64 = self.run(&self.scripts.issue_token, &keys, &args).await?;
        Ok(issued == 1)
    }

    async fn token_status(&self, token: &ReplaceToken, now: u64) -> Result<Option<TokenStatus>, StoreError> {
        let [key, leases] = self.keys.token(token);
        // One MULTI block: the terms, the count and the leases of one moment.
        let ((grant, committed), in_flight): ((Option<String>, Option<u32>), u32) = self
            .bounded(
                Resend::IfDropped,
                redis::pipe().atomic().cmd("HMGET").arg(&key).arg("grant").arg("committed").zcount(
                    &leases,
                    format!("({now}"),
                    "+inf",
                ),
            )
            .await?;
        match grant {
            Some(grant) => Ok(Some(TokenStatus {
                grant: decode(&grant)?,
                uploads_used: committed.unwrap_or(0),
                uploads_in_flight: in_flight,
            })),
            None => Ok(None),
        }
    }

    async fn reserve_slot(
        &self,
        token: &ReplaceToken,
        kind: TokenKind,
        id: &str,
        now: u64,
        lease_secs: u64,
    ) -> Result<Reservation, ReserveError> {
        let args = [
            now.to_string(),
            (now + lease_secs).to_string(),
            id.to_owned(),
            EXPIRED_TOKEN_RETENTION_SECS.to_string(),
            kind.as_str().to_owned(),
        ];
        let [hash, leases] = self.keys.token(token);
        let keys = [hash, leases, self.keys.withdrawn(id)];
        let answer: Vec<String> = self.run(&self.scripts.reserve_slot, &keys, &args).await?;
        match answer.as_slice() {
            [ok, grant, lease_until] if ok == "ok" => {
                let lease_until =
                    lease_until.parse().map_err(|_| store_error("reserve answered no lease end"))?;
                Ok(Reservation { grant: decode(grant)?, id: id.to_owned(), lease_until })
            }
            [withdrawn] if withdrawn == "withdrawn" => {
                Err(store_error("the reservation was withdrawn").into())
            }
            [refused] if refused == "unknown" => Err(ReserveError::Unknown),
            [refused] if refused == "expired" => Err(ReserveError::Expired),
            [refused] if refused == "used_up" => Err(ReserveError::UsedUp),
            other => Err(store_error(format!("unexpected reserve answer {other:?}")).into()),
        }
    }

    async fn withdraw_reservation(
        &self,
        token: &ReplaceToken,
        id: &str,
        until: u64,
    ) -> Result<(), StoreError> {
        let [_, leases] = self.keys.token(token);
        let keys = [leases, self.keys.withdrawn(id)];
        let _: i64 =
            self.run(&self.scripts.withdraw_slot, &keys, &[id.to_owned(), until.to_string()]).await?;
        Ok(())
    }

    async fn renew_reservation(
        &self,
        reservation: &Reservation,
        now: u64,
        lease_secs: u64,
    ) -> Result<bool, StoreError> {
        let args = [
            now.to_string(),
            (now + lease_secs).to_string(),
            reservation.id.clone(),
            EXPIRED_TOKEN_RETENTION_SECS.to_string(),
        ];
        let renewed: i64 = self
            .run(&self.scripts.renew_reservation, &self.keys.token(&reservation.grant.token), &args)
            .await?;
        Ok(renewed == 1)
    }

    async fn refund_slot(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let [_, leases] = self.keys.token(&reservation.grant.token);
        let _: i64 =
            self.run(&self.scripts.refund_slot, &[leases], std::slice::from_ref(&reservation.id)).await?;
        Ok(())
    }

    async fn commit_version(
        &self,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
        file: Option<&str>,
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitError> {
        self.commit_reserved(reservation, version, now, file, None, outbox).await
    }

    async fn update_upload_token(
        &self,
        token: &ReplaceToken,
        update: &MetadataUpdate,
        file: Option<&str>,
        now: u64,
    ) -> Result<TokenUpdate, StoreError> {
        let [key, _] = self.keys.token(token);
        let args =
            [now.to_string(), encode(update), file.unwrap_or_default().to_owned(), self.keys.prefix.clone()];
        let answer: String = self.run(&self.scripts.update_upload_token, &[key], &args).await?;
        match answer.as_str() {
            "ok" => Ok(TokenUpdate::Updated),
            "unknown" => Ok(TokenUpdate::Unknown),
            "too_many_files" => Ok(TokenUpdate::TooManyFiles),
            other => Err(store_error(format!("unexpected update answer {other:?}"))),
        }
    }

    async fn add_version(
        &self,
        photo_id: PhotoId,
        version: VersionFile,
    ) -> Result<Option<RecordedVersion>, StoreError> {
        match self.append(photo_id, &version, None, None).await? {
            Ok(photo) => Ok(Some(photo)),
            Err(CommitError::NoSuchPhoto) => Ok(None),
            Err(other) => Err(store_error(format!("appending without a reservation failed: {other}"))),
        }
    }

    async fn first_use_of_nonce(&self, key: &NonceKey, expires_at: u64) -> Result<bool, StoreError> {
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::EXAT(expires_at));
        // Never sent again: a second SET NX would take the first for a replay.
        let set: Option<String> = self
            .bounded(Resend::Never, redis::cmd("SET").arg(self.keys.nonce(key)).arg(1).arg(options))
            .await?;
        Ok(set.is_some())
    }

    async fn redeem_failures(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        let count: Option<u32> = self
            .bounded(Resend::IfDropped, redis::cmd("GET").arg(self.keys.redeem_failures(client, window)))
            .await?;
        Ok(count.unwrap_or(0))
    }

    async fn count_redeem_failure(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        let key = self.keys.redeem_failures(client, window);
        // Kept one minute past the window's end, for clock differences.
        let (count,): (u32,) = self
            .bounded(
                Resend::Never,
                redis::pipe().atomic().incr(&key, 1).expire_at(&key, ((window + 2) * 60) as i64).ignore(),
            )
            .await?;
        Ok(count)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.bounded(Resend::IfDropped, &redis::cmd("PING")).await?;
        Ok(())
    }

    /// Every key this store writes carries an expiry: nothing to purge.
    async fn purge_expired(&self, _now: u64) -> Result<Purged, StoreError> {
        Ok(Purged::default())
    }
}
