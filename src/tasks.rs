//! Clean-up work started where nothing can wait for it — in `Drop`, when a
//! request is cut (client gone, shutdown deadline): giving an upload slot
//! back, deleting a stored file nobody will commit, aborting a multipart
//! upload. The application owns one [`Cleanup`] and hands clones to whatever
//! may start such work, so a shutting-down process finishes it before it
//! exits instead of leaving the slot to its lease and the upload to the sweep.

use std::future::Future;
use std::time::Duration;

use tokio_util::task::TaskTracker;

/// The clean-up tasks of one application.
#[derive(Clone, Default)]
pub struct Cleanup(TaskTracker);

impl Cleanup {
    /// Runs `work` on the current runtime, tracked. Outside a runtime (a
    /// value dropped after the runtime ended) there is nothing to run it on;
    /// the lease or the sweep then finishes the job.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.0.spawn(work);
        }
    }

    /// Waits up to `limit` for the tasks started so far (and any they
    /// start) to finish. Returns how many were still running at the limit.
    pub async fn finish(&self, limit: Duration) -> usize {
        self.0.close();
        let _ = tokio::time::timeout(limit, self.0.wait()).await;
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finish_waits_for_the_tasks_started_so_far() {
        let cleanup = Cleanup::default();
        let (done, mut finished) = tokio::sync::oneshot::channel();
        cleanup.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = done.send(());
        });
        assert_eq!(cleanup.finish(Duration::from_secs(5)).await, 0);
        assert!(finished.try_recv().is_ok(), "the task ran to its end before finish returned");
    }
}
