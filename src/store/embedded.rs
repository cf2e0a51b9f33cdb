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

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{
    CommitError, EXPIRED_TOKEN_RETENTION_SECS, NewPhoto, NonceKey, Photo, PhotoVersion, Purged, Reservation,
    ReserveError, StateStore, StoreError, TokenGrant, TokenStatus, VersionFile,
};
use crate::causes::BoxError;
use crate::domain::{PhotoId, PhotoSecret, ReplaceToken, random_bytes};

const PHOTOS: TableDefinition<u64, &[u8]> = TableDefinition::new("photos");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Nonce identity → expiry.
const NONCES: TableDefinition<&str, u64> = TableDefinition::new("nonces");
/// (expiry, nonce identity) → (), so expired nonces are purged by range.
const NONCE_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("nonce_expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_PHOTO_ID: &str = "next_photo_id";

/// How many queued operations one commit may carry.
const MAX_BATCH: usize = 512;

/// A token with its usage, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct TokenState {
    grant: TokenGrant,
    committed: u32,
    reservations: Vec<LiveReservation>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LiveReservation {
    id: String,
    lease_until: u64,
}

impl TokenState {
    fn live_reservation(&mut self, id: &str, now: u64) -> Option<&mut LiveReservation> {
        self.reservations.iter_mut().find(|r| r.id == id && r.lease_until > now)
    }
}

fn store_error(e: impl Into<BoxError>) -> StoreError {
    StoreError::new(e)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::new(format!("corrupt record: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("state records always serialize")
}

/// One queued operation.
enum Job {
    /// A write answered once its batch is durable.
    Write(Box<dyn DurableWrite>),
    /// A nonce to record; nobody waits for it (see the module docs).
    Nonce { identity: String, expires_at: u64 },
}

/// Nonces queued for the writer and not yet durable.
type PendingNonces = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

fn lock_pending(pending: &PendingNonces) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    // Every update is a single insert or remove: a panic cannot leave it torn.
    pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A write operation answered after its batch commits.
trait DurableWrite: Send {
    /// Runs the operation inside the batch's transaction. Returns what to do
    /// once the commit's outcome is known, and whether the operation hit a
    /// storage error (which aborts the whole batch).
    fn apply(self: Box<Self>, txn: &WriteTransaction) -> (Finish, bool);
    /// Answers the caller when the batch could not even start.
    fn fail(self: Box<Self>, error: StoreError);
}

type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct WriteJob<T, F> {
    op: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> DurableWrite for WriteJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn apply(self: Box<Self>, txn: &WriteTransaction) -> (Finish, bool) {
        let reply = self.reply;
        match (self.op)(txn) {
            Ok(value) => (Box::new(move |committed| drop(reply.send(committed.map(|()| value)))), false),
            Err(error) => (Box::new(move |_| drop(reply.send(Err(error)))), true),
        }
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// The embedded state store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Failed redeems per client in the current and recent windows. Kept in
    /// memory only (one process owns the data directory); a restart forgets
    /// them, which only gives a guesser a fresh minute.
    redeem_failures: std::sync::Mutex<std::collections::HashMap<(String, u64), u32>>,
    pending_nonces: PendingNonces,
    /// `None` only while dropping.
    writer: Option<std::sync::mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    /// Closes the queue and waits for the writer to finish its last batch,
    /// so the database file is unlocked when the store is gone (a restart
    /// in the same process can reopen it at once).
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `state.redb` in `data_dir` and starts the writer.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(store_error)?;
        let path = data_dir.join("state.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::new(format!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        {
            // Create every table up front so read transactions never find one missing.
            let txn = db.begin_write().map_err(store_error)?;
            txn.open_table(PHOTOS).map_err(store_error)?;
            txn.open_table(TOKENS).map_err(store_error)?;
            txn.open_table(NONCES).map_err(store_error)?;
            txn.open_table(NONCE_EXPIRY).map_err(store_error)?;
            txn.open_table(META).map_err(store_error)?;
            txn.commit().map_err(store_error)?;
        }
        let (writer, queue) = std::sync::mpsc::channel::<Job>();
        let writer_db = Arc::clone(&db);
        let pending_nonces = PendingNonces::default();
        let writer_pending = Arc::clone(&pending_nonces);
        let writer_thread = std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || run_writer(&writer_db, &queue, &writer_pending))
            .map_err(store_error)?;
        Ok(EmbeddedStore {
            db,
            redeem_failures: Default::default(),
            pending_nonces,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
        })
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
        let (reply, answer) = oneshot::channel();
        self.enqueue(Job::Write(Box::new(WriteJob { op, reply })), answer).await
    }

    /// Whether a nonce with this identity is recorded and unexpired, in the
    /// committed state (a fresh snapshot).
    fn nonce_is_committed(&self, identity: &str, now: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let nonces = txn.open_table(NONCES).map_err(store_error)?;
        Ok(nonces.get(identity).map_err(store_error)?.is_some_and(|expiry| expiry.value() > now))
    }

    /// Hands `job` to the writer and waits for its `answer`.
    async fn enqueue<T>(
        &self,
        job: Job,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.send(job)?;
        answer.await.map_err(|_| StoreError::new("the embedded store's writer dropped an operation"))?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.writer
            .as_ref()
            .expect("the writer is present until drop")
            .send(job)
            .map_err(|_| StoreError::new("the embedded store's writer has stopped"))
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

    /// Deletes nonces past their expiry, tokens expired long ago with no
    /// live reservation, and failed-redeem counts of past windows.
    async fn purge(&self, now: u64) -> Result<Purged, StoreError> {
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
            let mut tokens_purged = 0;
            tokens
                .retain(|_, bytes| {
                    let keep = match serde_json::from_slice::<TokenState>(bytes) {
                        Ok(state) => {
                            let last_lease = state.reservations.iter().map(|r| r.lease_until).max();
                            let end = state.grant.valid_until.max(last_lease.unwrap_or(0));
                            end + EXPIRED_TOKEN_RETENTION_SECS > now
                        }
                        Err(_) => true,
                    };
                    if !keep {
                        tokens_purged += 1;
                    }
                    keep
                })
                .map_err(store_error)?;
            Ok(Purged { nonces: nonces_purged, tokens: tokens_purged })
        })
        .await
    }
}

fn run_writer(db: &Database, queue: &std::sync::mpsc::Receiver<Job>, pending: &PendingNonces) {
    // Nonces of a batch that failed to commit, to be written by the next.
    let mut carried: Vec<(String, u64)> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut nonces = std::mem::take(&mut carried);
        let mut writes = Vec::with_capacity(batch.len());
        for job in batch {
            match job {
                Job::Write(write) => writes.push(write),
                Job::Nonce { identity, expires_at } => nonces.push((identity, expires_at)),
            }
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                let message = e.to_string();
                for write in writes {
                    write.fail(StoreError::new(message.clone()));
                }
                carried = nonces;
                continue;
            }
        };
        // Nonces first: they were queued before the writes of their requests.
        let mut poisoned =
            nonces.iter().any(|(identity, expires_at)| record_nonce(&txn, identity, *expires_at).is_err());
        let mut finishes = Vec::with_capacity(writes.len());
        for write in writes {
            let (finish, failed) = write.apply(&txn);
            poisoned |= failed;
            finishes.push(finish);
        }
        let outcome = if poisoned {
            // Dropping the transaction aborts it: none of the batch is applied.
            drop(txn);
            Err("a storage error aborted this batch of writes".to_owned())
        } else {
            txn.commit().map_err(|e| e.to_string())
        };
        if outcome.is_ok() {
            let mut pending = lock_pending(pending);
            for (identity, _) in &nonces {
                pending.remove(identity);
            }
        } else {
            carried = nonces;
        }
        for finish in finishes {
            finish(outcome.clone().map_err(StoreError::new));
        }
    }
}

/// Records a nonce in `txn`: `true` the first time, `false` while an
/// earlier record of it has not expired.
fn record_nonce(txn: &WriteTransaction, identity: &str, expires_at: u64) -> Result<bool, StoreError> {
    let now = crate::domain::unix_now();
    let mut nonces = txn.open_table(NONCES).map_err(store_error)?;
    let previous = nonces.get(identity).map_err(store_error)?.map(|v| v.value());
    if previous.is_some_and(|expiry| expiry > now) {
        return Ok(false);
    }
    let mut index = txn.open_table(NONCE_EXPIRY).map_err(store_error)?;
    if let Some(old_expiry) = previous {
        index.remove((old_expiry, identity)).map_err(store_error)?;
    }
    nonces.insert(identity, expires_at).map_err(store_error)?;
    index.insert((expires_at, identity), ()).map_err(store_error)?;
    Ok(true)
}

fn get_token_state(
    tokens: &impl ReadableTable<&'static str, &'static [u8]>,
    token: &ReplaceToken,
) -> Result<Option<TokenState>, StoreError> {
    match tokens.get(token.as_str()).map_err(store_error)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

fn get_photo(
    photos: &impl ReadableTable<u64, &'static [u8]>,
    id: PhotoId,
) -> Result<Option<Photo>, StoreError> {
    match photos.get(id.0).map_err(store_error)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

fn append_version(
    txn: &WriteTransaction,
    id: PhotoId,
    version: VersionFile,
) -> Result<Option<Photo>, StoreError> {
    let mut photos = txn.open_table(PHOTOS).map_err(store_error)?;
    let Some(mut photo) = get_photo(&photos, id)? else {
        return Ok(None);
    };
    let number = photo.current_version().number + 1;
    photo.versions.push(PhotoVersion { number, file: version });
    photos.insert(id.0, encode(&photo).as_slice()).map_err(store_error)?;
    Ok(Some(photo))
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn create_photo(&self, new: NewPhoto) -> Result<Photo, StoreError> {
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(store_error)?;
            let id = meta.get(NEXT_PHOTO_ID).map_err(store_error)?.map_or(1, |v| v.value());
            meta.insert(NEXT_PHOTO_ID, id + 1).map_err(store_error)?;
            let photo = Photo {
                photo_id: PhotoId(id),
                tree_id: new.tree_id,
                token: PhotoSecret::generate(),
                title: new.title,
                created_at: new.first_version.created_at,
                versions: vec![PhotoVersion { number: 1, file: new.first_version }],
            };
            let mut photos = txn.open_table(PHOTOS).map_err(store_error)?;
            photos.insert(id, encode(&photo).as_slice()).map_err(store_error)?;
            Ok(photo)
        })
        .await
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.read(move |txn| get_photo(&txn.open_table(PHOTOS).map_err(store_error)?, id)).await
    }

    async fn issue_token(&self, grant: TokenGrant) -> Result<bool, StoreError> {
        self.write(move |txn| {
            if txn
                .open_table(PHOTOS)
                .map_err(store_error)?
                .get(grant.photo_id.0)
                .map_err(store_error)?
                .is_none()
            {
                return Ok(false);
            }
            let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let key = grant.token.as_str().to_owned();
            let state = TokenState { grant, committed: 0, reservations: Vec::new() };
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
        now: u64,
        lease_secs: u64,
    ) -> Result<Reservation, ReserveError> {
        let token = token.clone();
        self.write(move |txn| {
            let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let Some(mut state) = get_token_state(&tokens, &token)? else {
                return Ok(Err(ReserveError::Unknown));
            };
            if state.grant.valid_until <= now {
                return Ok(Err(ReserveError::Expired));
            }
            state.reservations.retain(|r| r.lease_until > now);
            if state.committed as usize + state.reservations.len() >= state.grant.max_uploads as usize {
                return Ok(Err(ReserveError::UsedUp));
            }
            let id = hex::encode(random_bytes::<16>());
            let lease_until = now + lease_secs;
            state.reservations.push(LiveReservation { id: id.clone(), lease_until });
            tokens.insert(token.as_str(), encode(&state).as_slice()).map_err(store_error)?;
            Ok(Ok(Reservation { grant: state.grant, id, lease_until }))
        })
        .await?
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
            let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let Some(mut state) = get_token_state(&tokens, &token)? else {
                return Ok(false);
            };
            let Some(live) = state.live_reservation(&id, now) else {
                return Ok(false);
            };
            live.lease_until = live.lease_until.max(now + lease_secs);
            tokens.insert(token.as_str(), encode(&state).as_slice()).map_err(store_error)?;
            Ok(true)
        })
        .await
    }

    async fn refund_slot(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let token = reservation.grant.token.clone();
        let id = reservation.id.clone();
        self.write(move |txn| {
            let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let Some(mut state) = get_token_state(&tokens, &token)? else {
                return Ok(());
            };
            let before = state.reservations.len();
            state.reservations.retain(|r| r.id != id);
            if state.reservations.len() != before {
                tokens.insert(token.as_str(), encode(&state).as_slice()).map_err(store_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn commit_version(
        &self,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
    ) -> Result<Photo, CommitError> {
        let token = reservation.grant.token.clone();
        let id = reservation.id.clone();
        let photo_id = reservation.grant.photo_id;
        self.write(move |txn| {
            let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
            let Some(mut state) = get_token_state(&tokens, &token)? else {
                return Ok(Err(CommitError::LeaseLost));
            };
            if state.live_reservation(&id, now).is_none() {
                return Ok(Err(CommitError::LeaseLost));
            }
            // Both writes below are in this one transaction: the slot is
            // consumed if and only if the version is recorded.
            let Some(photo) = append_version(txn, photo_id, version)? else {
                return Ok(Err(CommitError::NoSuchPhoto));
            };
            state.reservations.retain(|r| r.id != id);
            state.committed += 1;
            tokens.insert(token.as_str(), encode(&state).as_slice()).map_err(store_error)?;
            Ok(Ok(photo))
        })
        .await?
    }

    async fn add_version(
        &self,
        photo_id: PhotoId,
        version: VersionFile,
    ) -> Result<Option<Photo>, StoreError> {
        self.write(move |txn| append_version(txn, photo_id, version)).await
    }

    async fn first_use_of_nonce(&self, key: &NonceKey, expires_at: u64) -> Result<bool, StoreError> {
        let identity = key.identity();
        {
            // Held across the snapshot read: a nonce leaves the set only after
            // its commit, so a snapshot taken under the lock sees it.
            let mut pending = lock_pending(&self.pending_nonces);
            if pending.contains(&identity) || self.nonce_is_committed(&identity, crate::domain::unix_now())? {
                return Ok(false);
            }
            pending.insert(identity.clone());
        }
        self.send(Job::Nonce { identity, expires_at })?;
        Ok(true)
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

    async fn purge_expired(&self, now: u64) -> Result<Purged, StoreError> {
        self.purge(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(key: &str) -> VersionFile {
        VersionFile {
            object_key: key.to_owned(),
            size: 3,
            content_type: "image/jpeg".to_owned(),
            sha256: "00".repeat(32),
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
                .create_photo(NewPhoto { tree_id: "1".into(), title: None, first_version: version("a") })
                .await
                .unwrap();
            let grant = TokenGrant {
                token: token.clone(),
                photo_id: photo.photo_id,
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
    async fn a_nonce_queued_in_a_batch_that_failed_is_made_durable_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let key = NonceKey { consumer_key: "ck".into(), token: "t".into(), nonce: "n".into(), timestamp: 1 };
        let expires = crate::domain::unix_now() + 600;
        // Hold the writer in a first batch so the next two jobs share one.
        let (held, release) = std::sync::mpsc::channel::<()>();
        let holder = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.write(move |_| release.recv().map_err(store_error)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(store.first_use_of_nonce(&key, expires).await.unwrap(), "answered without waiting");
        let failing = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.write(|_| Err::<(), _>(StoreError::new("injected"))).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        held.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert!(failing.await.unwrap().is_err(), "the injected failure aborts its batch, nonce and all");
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
