//! The embedded [`StateStore`]: a redb database file under the data
//! directory, so the single-process default loses nothing on restart.
//!
//! # Concurrency
//! redb allows one write transaction at a time, and a durable commit costs an
//! fsync. All writes therefore go to one writer thread that takes every
//! operation waiting in its queue, applies them one after another inside a
//! single write transaction and commits once (group commit). Each operation
//! still sees the effects of the ones before it, so each is atomic on its
//! own; callers are answered only after the commit is durable. Reads use
//! redb's MVCC read transactions and never wait for the writer.
//!
//! # Nonces without a wait
//! A nonce is checked on the calling thread, against the nonces queued but
//! not yet committed (a set in memory) and a snapshot of the committed ones,
//! and its record is queued for the writer without waiting for it. That
//! saves every signed request one wait for an fsync, and stays safe: the
//! request's own writes are queued after its nonce, so they land in the same
//! batch or a later one, and batches become durable in order: whenever a
//! request's effects survive a crash, its nonce does too. A nonce leaves the
//! set only once its batch is durable; a batch that fails to commit hands
//! its nonces to the next one.

//!
//! # Layout
//! `tables`: the tables, their records and the reads and writes of one
//! transaction; `writer`: the group-commit writer thread; this file: the
//! [`StateStore`] operations, each one closure run by the writer (or one
//! snapshot read).

mod chunked;
mod chunked_store;
mod deliveries;
mod deliveries_store;
mod tables;
mod writer;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    CommitError, EXPIRED_TOKEN_RETENTION_SECS, MetadataUpdate, NewPhoto, NonceKey, Photo, Purged,
    RecordedVersion, Reservation, ReserveError, StateStore, StoreError, TokenGrant, TokenKind, TokenStatus,
    TokenUpdate, VersionFile,
};
use crate::domain::{PhotoId, ReplaceToken, unix_now};
use crate::store::deliveries::{Outbox, SETTLED_RETENTION_SECS};
use tables::{
    LiveReservation, META, NONCE_EXPIRY, NONCES, PHOTOS, TOKENS, TokenState, append_version, commit_reserved,
    create_photo, create_tables, delete_files, encode, get_file, get_token_state, put_file, read_photo,
    store_error, token_files, update_photo_metadata, update_token,
};
use writer::Writer;

/// The embedded state store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Failed redeems per client in the current and recent windows. Kept in
    /// memory only (one process owns the data directory); a restart forgets
    /// them, which only gives a guesser a fresh minute.
    redeem_failures: std::sync::Mutex<std::collections::HashMap<(String, u64), u32>>,
    /// Chunks being received right now (hints, in memory like the above).
    arrivals: Arc<chunked::Arrivals>,
    writer: Writer,
}

impl EmbeddedStore {
    /// Opens (or creates) `state.redb` in `data_dir` and starts the writer.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(store_error)?;
        let path = data_dir.join("state.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::new(format!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        create_tables(&db)?;
        let writer = Writer::start(Arc::clone(&db)).map_err(store_error)?;
        Ok(EmbeddedStore { db, redeem_failures: Default::default(), arrivals: Default::default(), writer })
    }

    fn failure_counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, u64), u32>> {
        // A panic while the lock was held cannot leave a count half-updated.
        self.redeem_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `op` in the writer's next batch and waits for the durable commit.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(op).await
    }

    /// Whether a nonce with this identity is recorded and unexpired, in the
    /// committed state (a fresh snapshot).
    fn nonce_is_committed(&self, identity: &str, now: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let nonces = txn.open_table(NONCES).map_err(store_error)?;
        Ok(nonces.get(identity).map_err(store_error)?.is_some_and(|expiry| expiry.value() > now))
    }

    /// Runs a read-only closure on a fresh snapshot, on the calling thread.
    ///
    /// The reads here fetch one small record through redb's page cache, which
    /// takes microseconds; handing them to the blocking pool cost more (two
    /// thread wake-ups per read) than they block an async worker.
    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    {
        let txn = self.db.begin_read().map_err(store_error)?;
        op(&txn)
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn create_photo(&self, new: NewPhoto) -> Result<Photo, StoreError> {
        self.write(move |txn| {
            let (record, first) = create_photo(txn, new)?;
            Ok(record.with_versions(vec![first]))
        })
        .await
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.read(move |txn| read_photo(txn, id)).await
    }

    async fn issue_token(&self, grant: TokenGrant) -> Result<bool, StoreError> {
        self.write(move |txn| {
            if let Some(photo_id) = grant.photo_id()
                && txn
                    .open_table(PHOTOS)
                    .map_err(store_error)?
                    .get(photo_id.0)
                    .map_err(store_error)?
                    .is_none()
            {
                return Ok(false);
            }
            let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let key = grant.token.as_str().to_owned();
            let state = TokenState::issued(grant);
            tokens.insert(key.as_str(), encode(&state).as_slice()).map_err(store_error)?;
            Ok(true)
        })
        .await
    }

    async fn token_status(&self, token: &ReplaceToken, now: u64) -> Result<Option<TokenStatus>, StoreError> {
        let token = token.clone();
        self.read(move |txn| {
            let state = get_token_state(&txn.open_table(TOKENS).map_err(store_error)?, &token)?;
            Ok(state.map(|s| TokenStatus {
                uploads_in_flight: s.reservations.iter().filter(|r| r.lease_until > now).count() as u32,
                uploads_used: s.committed,
                grant: s.grant,
            }))
        })
        .await
    }

    async fn reserve_slot(
        &self,
        token: &ReplaceToken,
        kind: TokenKind,
        id: &str,
        now: u64,
        lease_secs: u64,
    ) -> Result<Reservation, ReserveError> {
        let (token, id) = (token.clone(), id.to_owned());
        self.write(move |txn| {
            update_token(txn, &token, Err(ReserveError::Unknown), |state| {
                if state.grant.kind() != kind {
                    return Ok((Err(ReserveError::Unknown), false));
                }
                if state.grant.valid_until <= now {
                    return Ok((Err(ReserveError::Expired), false));
                }
                if state.withdrawn.iter().any(|w| w.id == id && w.lease_until > now) {
                    return Ok((
                        Err(ReserveError::Store(StoreError::new("the reservation was withdrawn"))),
                        false,
                    ));
                }
                state.reservations.retain(|r| r.lease_until > now);
                if let Some(live) = state.reservations.iter().find(|r| r.id == id) {
                    let reservation =
                        Reservation { grant: state.grant.clone(), id, lease_until: live.lease_until };
                    return Ok((Ok(reservation), false));
                }
                if state.committed as usize + state.reservations.len() >= state.grant.max_uploads as usize {
                    return Ok((Err(ReserveError::UsedUp), false));
                }
                let lease_until = now + lease_secs;
                state.reservations.push(LiveReservation { id: id.clone(), lease_until });
                Ok((Ok(Reservation { grant: state.grant.clone(), id, lease_until }), true))
            })
        })
        .await?
    }

    async fn withdraw_reservation(
        &self,
        token: &ReplaceToken,
        id: &str,
        until: u64,
    ) -> Result<(), StoreError> {
        let (token, id) = (token.clone(), id.to_owned());
        self.write(move |txn| {
            update_token(txn, &token, (), |state| {
                let now = unix_now();
                state.reservations.retain(|r| r.id != id);
                state.withdrawn.retain(|w| w.lease_until > now && w.id != id);
                state.withdrawn.push(LiveReservation { id, lease_until: until });
                Ok(((), true))
            })
        })
        .await
    }

    async fn renew_reservation(
        &self,
        reservation: &Reservation,
        now: u64,
        lease_secs: u64,
    ) -> Result<bool, StoreError> {
        let token = reservation.grant.token.clone();
        let id = reservation.id.clone();
        self.write(move |txn| {
            update_token(txn, &token, false, |state| {
                let Some(live) = state.live_reservation(&id, now) else {
                    return Ok((false, false));
                };
                live.lease_until = live.lease_until.max(now + lease_secs);
                Ok((true, true))
            })
        })
        .await
    }

    async fn refund_slot(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let token = reservation.grant.token.clone();
        let id = reservation.id.clone();
        self.write(move |txn| {
            update_token(txn, &token, (), |state| {
                let before = state.reservations.len();
                state.reservations.retain(|r| r.id != id);
                Ok(((), state.reservations.len() != before))
            })
        })
        .await
    }

    async fn commit_version(
        &self,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
        file: Option<&str>,
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitError> {
        let token = reservation.grant.token.clone();
        let id = reservation.id.clone();
        let (file, outbox) = (file.map(str::to_owned), outbox.clone());
        self.write(move |txn| {
            let committed = commit_reserved(txn, &token, &id, version, now, file.as_deref())?;
            if let Ok(recorded) = &committed {
                deliveries::write_outbox(txn, &outbox, recorded)?;
            }
            Ok(committed)
        })
        .await?
    }

    async fn update_upload_token(
        &self,
        token: &ReplaceToken,
        update: &MetadataUpdate,
        file: Option<&str>,
        now: u64,
    ) -> Result<TokenUpdate, StoreError> {
        let (token, update, file) = (token.clone(), update.clone(), file.map(str::to_owned));
        self.write(move |txn| {
            update_token(txn, &token, TokenUpdate::Unknown, |state| {
                let Some(upload) = state.upload.as_mut().filter(|_| state.grant.valid_until > now) else {
                    return Ok((TokenUpdate::Unknown, false));
                };
                let key = token.as_str();
                let photos = match file {
                    None => {
                        update.apply_to(&mut upload.metadata);
                        // The latest change wins: files' own values of
                        // these fields give way to it.
                        for (file, mut own) in token_files(txn, key)? {
                            if let Some(own_update) = own.update.as_mut() {
                                own_update.forget(&update);
                                put_file(txn, key, &file, &own)?;
                            }
                        }
                        upload.photos.clone()
                    }
                    Some(file) => {
                        let mut own = get_file(txn, key, &file)?.unwrap_or_default();
                        if own.update.is_none() {
                            let files = token_files(txn, key)?;
                            let with_metadata = files.iter().filter(|(_, f)| f.update.is_some()).count();
                            if with_metadata >= state.grant.max_uploads as usize {
                                return Ok((TokenUpdate::TooManyFiles, false));
                            }
                        }
                        own.update.get_or_insert_default().merge(&update);
                        put_file(txn, key, &file, &own)?;
                        own.photos
                    }
                };
                for photo_id in photos {
                    update_photo_metadata(txn, photo_id, &update)?;
                }
                Ok((TokenUpdate::Updated, true))
            })
        })
        .await
    }

    async fn add_version(
        &self,
        photo_id: PhotoId,
        version: VersionFile,
    ) -> Result<Option<RecordedVersion>, StoreError> {
        self.write(move |txn| append_version(txn, photo_id, version)).await
    }

    async fn first_use_of_nonce(&self, key: &NonceKey, expires_at: u64) -> Result<bool, StoreError> {
        let now = crate::domain::unix_now();
        self.writer.claim_nonce(key.identity(), expires_at, |identity| self.nonce_is_committed(identity, now))
    }

    async fn redeem_failures(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        Ok(self.failure_counts().get(&(client.to_owned(), window)).copied().unwrap_or(0))
    }

    async fn count_redeem_failure(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        let mut counts = self.failure_counts();
        let count = counts.entry((client.to_owned(), window)).or_default();
        *count += 1;
        Ok(*count)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write round trip proves the writer thread is alive and the file
        // is writable, not just that a snapshot can be read.
        self.write(|txn| txn.open_table(META).map(drop).map_err(store_error)).await
    }

    /// Deletes nonces past their expiry, tokens expired long ago with no
    /// live reservation, and failed-redeem counts of past windows.
    async fn purge_expired(&self, now: u64) -> Result<Purged, StoreError> {
        self.failure_counts().retain(|(_, window), _| (window + 1) * 60 > now);
        self.write(move |txn| {
            let mut nonces_purged = 0;
            let mut index = txn.open_table(NONCE_EXPIRY).map_err(store_error)?;
            let mut nonces = txn.open_table(NONCES).map_err(store_error)?;
            let expired = index.extract_from_if((0u64, "")..(now, ""), |_, _| true).map_err(store_error)?;
            for entry in expired {
                let (key, _) = entry.map_err(store_error)?;
                let (_, identity) = key.value();
                nonces.remove(identity).map_err(store_error)?;
                nonces_purged += 1;
            }
            let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let mut purged_tokens = Vec::new();
            tokens
                .retain(|key, bytes| {
                    let keep = match serde_json::from_slice::<TokenState>(bytes) {
                        Ok(state) => {
                            let last_lease = state.reservations.iter().map(|r| r.lease_until).max();
                            let end =
                                state.grant.valid_until.max(last_lease.unwrap_or(0)).max(state.keep_until);
                            end + EXPIRED_TOKEN_RETENTION_SECS > now
                        }
                        Err(_) => true,
                    };
                    if !keep {
                        purged_tokens.push(key.to_owned());
                    }
                    keep
                })
                .map_err(store_error)?;
            for token in &purged_tokens {
                delete_files(txn, token)?;
                deliveries::delete_events(txn, token)?;
            }
            chunked::purge_files(txn, now, EXPIRED_TOKEN_RETENTION_SECS)?;
            let deliveries = deliveries::purge_settled(txn, now.saturating_sub(SETTLED_RETENTION_SECS))?;
            Ok(Purged { nonces: nonces_purged, tokens: purged_tokens.len() as u64, deliveries })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PhotoSecret;
    use crate::store::TokenPurpose;
    use crate::store::{PhotoRecord, PhotoVersion};

    fn version(key: &str) -> VersionFile {
        VersionFile {
            object_key: key.to_owned(),
            size: 3,
            content_type: "image/jpeg".to_owned(),
            sha256: "00".repeat(32),
            crc64nvme: None,
            original_filename: None,
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn photos_tokens_and_nonces_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let token = ReplaceToken::generate();
        let photo = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let photo = store
                .create_photo(NewPhoto {
                    tree_id: "1".into(),
                    metadata: Default::default(),
                    first_version: version("a"),
                })
                .await
                .unwrap();
            let grant = TokenGrant {
                token: token.clone(),
                purpose: TokenPurpose::Replace { photo_id: photo.photo_id },
                max_uploads: 1,
                issued_at: 1,
                valid_until: u64::MAX / 2,
                return_url: None,
                background_return: false,
                issued_to: "ck".into(),
            };
            store.issue_token(grant).await.unwrap();
            photo
        };
        // The writer thread holds the database; wait for it to let go.
        let store = loop {
            match EmbeddedStore::open(dir.path()) {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert_eq!(store.photo(photo.photo_id).await.unwrap(), Some(photo));
        assert!(store.token_status(&token, 1).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn photos_kept_whole_by_an_earlier_release_are_split_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let record = PhotoRecord {
            photo_id: PhotoId(7),
            tree_id: "1".into(),
            token: PhotoSecret::generate(),
            metadata: Default::default(),
            created_at: 1,
        };
        let versions = vec![
            PhotoVersion { number: 1, file: version("a") },
            PhotoVersion { number: 2, file: version("b") },
        ];
        let whole = record.clone().with_versions(versions.clone());
        {
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            let legacy: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("photos");
            txn.open_table(legacy).unwrap().insert(7, encode(&whole).as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.photo(PhotoId(7)).await.unwrap(), Some(whole));
        let recorded = store.add_version(PhotoId(7), version("c")).await.unwrap().unwrap();
        assert_eq!(recorded.version.number, 3, "numbering goes on from the split versions");
        assert_eq!(store.photo(PhotoId(7)).await.unwrap().unwrap().versions.len(), 3);
        let txn = store.db.begin_read().unwrap();
        assert!(
            !txn.list_tables().unwrap().any(|t| redb::TableHandle::name(&t) == "photos"),
            "legacy table gone"
        );
    }

    #[tokio::test]
    async fn a_nonce_queued_in_a_batch_that_failed_is_made_durable_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let key = NonceKey { consumer_key: "ck".into(), token: "t".into(), nonce: "n".into(), timestamp: 1 };
        let expires = crate::domain::unix_now() + 600;
        // Hold the writer in a first batch so the next two jobs share one.
        let (running, started) = std::sync::mpsc::channel::<()>();
        let (held, release) = std::sync::mpsc::channel::<()>();
        let mut holder = Box::pin(store.write(move |_| {
            let _ = running.send(());
            release.recv().map_err(store_error)
        }));
        assert!(futures_util::poll!(&mut holder).is_pending(), "queued");
        started.recv_timeout(std::time::Duration::from_secs(5)).expect("the writer runs the first batch");
        assert!(store.first_use_of_nonce(&key, expires).await.unwrap(), "answered without waiting");
        let mut failing = Box::pin(store.write(|_| Err::<(), _>(StoreError::new("injected"))));
        assert!(futures_util::poll!(&mut failing).is_pending(), "queued behind the held batch");
        held.send(()).unwrap();
        holder.await.unwrap();
        assert!(failing.await.is_err(), "the injected failure aborts its batch, nonce and all");
        assert!(!store.first_use_of_nonce(&key, expires).await.unwrap(), "a replay meanwhile is refused");
        store.ping().await.unwrap();
        drop(store);
        let reopened = loop {
            match EmbeddedStore::open(dir.path()) {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert!(
            !reopened.first_use_of_nonce(&key, expires).await.unwrap(),
            "the next batch made the aborted batch's nonce durable"
        );
    }

    #[tokio::test]
    async fn purge_removes_expired_nonces_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let key = |n: &str| NonceKey {
            consumer_key: "ck".into(),
            token: "t".into(),
            nonce: n.into(),
            timestamp: 1,
        };
        let now = crate::domain::unix_now();
        assert!(store.first_use_of_nonce(&key("old"), now + 1).await.unwrap());
        assert!(store.first_use_of_nonce(&key("new"), now + 1000).await.unwrap());
        let purged = store.purge_expired(now + 2).await.unwrap();
        assert_eq!(purged.nonces, 1);
        assert!(!store.first_use_of_nonce(&key("new"), now + 1000).await.unwrap());
    }
}
