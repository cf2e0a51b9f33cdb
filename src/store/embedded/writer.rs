//! The embedded store's one writer thread: every queued operation of a
//! batch runs in one write transaction, committed once (group commit), and
//! each caller is answered when its batch is durable. Nonces ride along
//! without a caller waiting (see the store's module docs).

use std::sync::Arc;

use redb::{Database, WriteTransaction};
use tokio::sync::oneshot;

use super::tables::record_nonce;
use crate::store::StoreError;

/// How many queued operations one commit may carry.
const MAX_BATCH: usize = 512;

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

/// The handle on the writer thread. Dropping it closes the queue and waits
/// for the last batch, so the database file is unlocked when the store is
/// gone (a restart in the same process can reopen it at once).
pub struct Writer {
    /// `None` only while dropping.
    queue: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pending_nonces: PendingNonces,
}

impl Writer {
    /// Starts the writer thread on `db`.
    pub fn start(db: Arc<Database>) -> std::io::Result<Writer> {
        let (queue, jobs) = std::sync::mpsc::channel::<Job>();
        let pending_nonces = PendingNonces::default();
        let pending = Arc::clone(&pending_nonces);
        let thread = std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || run_writer(&db, &jobs, &pending))?;
        Ok(Writer { queue: Some(queue), thread: Some(thread), pending_nonces })
    }

    /// Runs `op` in the writer's next batch and waits for the durable commit.
    pub async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Write(Box::new(WriteJob { op, reply })))?;
        answer.await.map_err(|_| StoreError::new("the embedded store's writer dropped an operation"))?
    }

    /// Claims a nonce: `false` when it is queued already or `is_committed`
    /// finds it; otherwise queues its record without waiting and answers
    /// `true`. `is_committed` reads a snapshot while the queued set is
    /// locked: a nonce leaves the set only after its commit, so the
    /// snapshot sees every nonce that is no longer in the set.
    pub fn claim_nonce(
        &self,
        identity: String,
        expires_at: u64,
        is_committed: impl FnOnce(&str) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        {
            let mut pending = lock_pending(&self.pending_nonces);
            if pending.contains(&identity) || is_committed(&identity)? {
                return Ok(false);
            }
            pending.insert(identity.clone());
        }
        self.send(Job::Nonce { identity, expires_at })?;
        Ok(true)
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.queue
            .as_ref()
            .expect("the queue is open until drop")
            .send(job)
            .map_err(|_| StoreError::new("the embedded store's writer has stopped"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
