//! The Redis [`StateStore`], for many instances behind a load balancer.
//!
//! Each operation is one Lua script (run by SHA, loaded again when the
//! server has forgotten it) or one command, so each is atomic on its own.
//! Every script touches keys of one hash slot only — keys share a hash tag
//! (`{t:<token>}`, `{p:<photo id>}`) — so the same state runs on a Redis
//! Cluster. Keys live under a configurable prefix; token keys expire with
//! their token.
//!
//! # Commit across two slots
//! A commit changes a token (consume the slot) and a photo (append the
//! version), which live in different slots. It runs in this order:
//! 1. on the token: the lease must be live; it is removed, `committed` goes
//!    up, and a `pending:<reservation>` record holds the version;
//! 2. on the photo: the version is appended unless its object key is
//!    already there (idempotent);
//! 3. on the token: the pending record is deleted.
//!
//! A crash after 1 can only leave a slot consumed without its version (never
//! an extra upload), plus the record from which
//! [`RedisStore::complete_pending_commits`] finishes step 2.
//!
//! # Timeouts
//! Connecting and every command are bounded by `state.redis_timeout_secs`.
//! A command that timed out is reported as an error, never sent again: a
//! resend could apply it twice.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::{
    CommitError, NewPhoto, NonceKey, Photo, PhotoVersion, Reservation, ReserveError, StateStore, StoreError,
    TokenGrant, VersionFile,
};
use crate::domain::{PhotoId, PhotoSecret, ReplaceToken, random_bytes};

/// Token keys outlive their token (or its last lease) by this much, a margin
/// for clock differences between instances. An expired token and an unknown
/// one get the same answer, so nothing needs them kept longer.
const EXPIRED_TOKEN_RETENTION_SECS: u64 = 60;

/// The scripts, compiled once (their SHA-1 is computed here).
struct Scripts {
    issue_token: Script,
    reserve_slot: Script,
    renew_reservation: Script,
    refund_slot: Script,
    consume_slot: Script,
    append_version: Script,
    finish_commit: Script,
    create_photo: Script,
    get_photo: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            issue_token: Script::new(include_str!("lua/issue_token.lua")),
            reserve_slot: Script::new(include_str!("lua/reserve_slot.lua")),
            renew_reservation: Script::new(include_str!("lua/renew_reservation.lua")),
            refund_slot: Script::new(include_str!("lua/refund_slot.lua")),
            consume_slot: Script::new(include_str!("lua/consume_slot.lua")),
            append_version: Script::new(include_str!("lua/append_version.lua")),
            finish_commit: Script::new(include_str!("lua/finish_commit.lua")),
            create_photo: Script::new(include_str!("lua/create_photo.lua")),
            get_photo: Script::new(include_str!("lua/get_photo.lua")),
        }
    }
}

/// A photo without its versions (those are a list of their own).
#[derive(Serialize, Deserialize)]
struct PhotoMeta {
    photo_id: PhotoId,
    tree_id: String,
    token: PhotoSecret,
    title: Option<String>,
    created_at: u64,
}

/// What step 1 of a commit leaves for step 2.
#[derive(Serialize, Deserialize)]
struct PendingCommit {
    photo_id: PhotoId,
    version: VersionFile,
}

/// Key names, all under the configured prefix.
struct Keys {
    prefix: String,
}

impl Keys {
    fn token(&self, token: &ReplaceToken) -> [String; 2] {
        let tag = format!("{}{{t:{}}}", self.prefix, token.as_str());
        [tag.clone(), format!("{tag}:leases")]
    }

    fn photo(&self, id: PhotoId) -> [String; 3] {
        let tag = format!("{}{{p:{id}}}", self.prefix);
        [tag.clone(), format!("{tag}:versions"), format!("{tag}:keys")]
    }

    fn photo_sequence(&self) -> String {
        format!("{}photo_seq", self.prefix)
    }

    fn nonce(&self, key: &NonceKey) -> String {
        // Hashed: nonces are client-chosen and may be long or odd.
        use sha2::Digest;
        let identity = format!("{}\n{}\n{}\n{}", key.consumer_key, key.token, key.nonce, key.timestamp);
        format!("{}n:{}", self.prefix, hex::encode(sha2::Sha256::digest(identity.as_bytes())))
    }
}

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

    /// Awaits one Redis call within the timeout. A call that times out is
    /// reported, never sent again (a resend could apply it twice).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| store_error("timed out"))?
            .map_err(store_error)
    }

    /// Runs a script; the whole call, reload included, is bounded by the
    /// timeout, and never retried after it.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        self.bounded(invocation.invoke_async(&mut connection)).await
    }

    fn photo_from_parts(parts: Vec<String>) -> Result<Option<Photo>, StoreError> {
        let mut parts = parts.into_iter();
        let Some(meta) = parts.next() else { return Ok(None) };
        let meta: PhotoMeta = decode(&meta)?;
        let versions = parts.map(|v| decode::<PhotoVersion>(&v)).collect::<Result<Vec<_>, _>>()?;
        if versions.is_empty() {
            return Err(StoreError::new(format!("photo {} has no versions in redis", meta.photo_id)));
        }
        Ok(Some(Photo {
            photo_id: meta.photo_id,
            tree_id: meta.tree_id,
            token: meta.token,
            title: meta.title,
            created_at: meta.created_at,
            versions,
        }))
    }

    async fn append(&self, photo_id: PhotoId, version: &VersionFile) -> Result<Option<Photo>, StoreError> {
        let parts: Vec<String> = self
            .run(
                &self.scripts.append_version,
                &self.keys.photo(photo_id),
                &[version.object_key.clone(), encode(version)],
            )
            .await?;
        Self::photo_from_parts(parts)
    }

    /// Finishes commits interrupted between their steps (see the module
    /// docs): for every pending record, appends its version (idempotent)
    /// and deletes the record. Returns how many were finished.
    pub async fn complete_pending_commits(&self) -> Result<usize, StoreError> {
        let mut connection = self.connection().await?;
        let pattern = format!("{}{{t:*}}", self.keys.prefix);
        let mut token_keys = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> =
                connection.scan_match(&pattern).await.map_err(store_error)?;
            while let Some(item) = futures_util::StreamExt::next(&mut iter).await {
                token_keys.push(item.map_err(store_error)?);
            }
        }
        let mut finished = 0;
        for key in token_keys {
            let fields: Vec<(String, String)> = connection.hgetall(&key).await.map_err(store_error)?;
            for (field, json) in fields {
                let Some(reservation) = field.strip_prefix("pending:") else { continue };
                let pending: PendingCommit = decode(&json)?;
                if self.append(pending.photo_id, &pending.version).await?.is_none() {
                    tracing::warn!(photo_id = %pending.photo_id, "a pending commit names a photo that is gone");
                }
                let _: i64 = self
                    .run(&self.scripts.finish_commit, std::slice::from_ref(&key), &[reservation.to_owned()])
                    .await?;
                finished += 1;
            }
        }
        Ok(finished)
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn create_photo(&self, new: NewPhoto) -> Result<Photo, StoreError> {
        let mut connection = self.connection().await?;
        // A crash between taking the id and storing the photo only skips an id.
        let id: u64 = self.bounded(connection.incr(self.keys.photo_sequence(), 1)).await?;
        let meta = PhotoMeta {
            photo_id: PhotoId(id),
            tree_id: new.tree_id,
            token: PhotoSecret::generate(),
            title: new.title,
            created_at: new.first_version.created_at,
        };
        let args = [encode(&meta), new.first_version.object_key.clone(), encode(&new.first_version)];
        let _: i64 = self.run(&self.scripts.create_photo, &self.keys.photo(meta.photo_id), &args).await?;
        Ok(Photo {
            photo_id: meta.photo_id,
            tree_id: meta.tree_id,
            token: meta.token,
            title: meta.title,
            created_at: meta.created_at,
            versions: vec![PhotoVersion { number: 1, file: new.first_version }],
        })
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        let keys = self.keys.photo(id);
        let parts: Vec<String> = self.run(&self.scripts.get_photo, &keys[..2], &[]).await?;
        Self::photo_from_parts(parts)
    }

    async fn issue_token(&self, grant: TokenGrant) -> Result<(), StoreError> {
        let args = [
            encode(&grant),
            grant.max_uploads.to_string(),
            grant.valid_until.to_string(),
            (grant.valid_until + EXPIRED_TOKEN_RETENTION_SECS).to_string(),
        ];
        let _: i64 = self.run(&self.scripts.issue_token, &self.keys.token(&grant.token), &args).await?;
        Ok(())
    }

    async fn token(&self, token: &ReplaceToken) -> Result<Option<(TokenGrant, u32)>, StoreError> {
        let mut connection = self.connection().await?;
        let [key, _] = self.keys.token(token);
        let (grant, committed): (Option<String>, Option<u32>) =
            self.bounded(connection.hmget(&key, &["grant", "committed"])).await?;
        match grant {
            Some(grant) => Ok(Some((decode(&grant)?, committed.unwrap_or(0)))),
            None => Ok(None),
        }
    }

    async fn reserve_slot(
        &self,
        token: &ReplaceToken,
        now: u64,
        lease_secs: u64,
    ) -> Result<Reservation, ReserveError> {
        let id = hex::encode(random_bytes::<16>());
        let lease_until = now + lease_secs;
        let args =
            [now.to_string(), lease_until.to_string(), id.clone(), EXPIRED_TOKEN_RETENTION_SECS.to_string()];
        let answer: Vec<String> =
            self.run(&self.scripts.reserve_slot, &self.keys.token(token), &args).await?;
        match answer.first().map(String::as_str) {
            Some("ok") => {
                let grant =
                    decode(answer.get(1).ok_or_else(|| store_error("reserve answered without a grant"))?)?;
                Ok(Reservation { grant, id, lease_until })
            }
            Some("unknown") => Err(ReserveError::Unknown),
            Some("expired") => Err(ReserveError::Expired),
            Some("used_up") => Err(ReserveError::UsedUp),
            other => Err(store_error(format!("unexpected reserve answer {other:?}")).into()),
        }
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
    ) -> Result<Photo, CommitError> {
        let token_keys = self.keys.token(&reservation.grant.token);
        let photo_id = reservation.grant.photo_id;
        let pending = encode(&PendingCommit { photo_id, version: version.clone() });
        let consumed: i64 = self
            .run(&self.scripts.consume_slot, &token_keys, &[now.to_string(), reservation.id.clone(), pending])
            .await?;
        if consumed != 1 {
            return Err(CommitError::LeaseLost);
        }
        // Photos are never deleted; if this one is gone all the same, the
        // pending record stays until the token expires and the slot is spent.
        let photo = self.append(photo_id, &version).await?.ok_or(CommitError::NoSuchPhoto)?;
        let _: i64 = self
            .run(&self.scripts.finish_commit, &token_keys[..1], std::slice::from_ref(&reservation.id))
            .await?;
        Ok(photo)
    }

    async fn add_version(
        &self,
        photo_id: PhotoId,
        version: VersionFile,
    ) -> Result<Option<Photo>, StoreError> {
        self.append(photo_id, &version).await
    }

    async fn first_use_of_nonce(&self, key: &NonceKey, expires_at: u64) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::EXAT(expires_at));
        let set: Option<String> =
            self.bounded(connection.set_options(self.keys.nonce(key), 1, options)).await?;
        Ok(set.is_some())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut connection)).await?;
        Ok(())
    }
}
