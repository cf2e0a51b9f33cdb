//! Clean-up work started where nothing can wait for it — in `Drop`, when a
//! request is cut (client gone, shutdown deadline): giving an upload slot
//! back, aborting a multipart upload. Such tasks are tracked here so that a
//! shutting-down process finishes them before it exits instead of leaving
//! the slot to its lease and the upload to the sweep.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio_util::task::TaskTracker;

static TASKS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Runs `work` on the current runtime (if any), tracked.
pub fn spawn(work: impl Future<Output = ()> + Send + 'static) {
    if tokio::runtime::Handle::try_current().is_ok() {
        TASKS.spawn(work);
    }
}

/// Waits up to `limit` for the clean-up tasks started so far (and any they
/// start) to finish. Returns how many were still running at the limit.
pub async fn finish(limit: Duration) -> usize {
    TASKS.close();
    let _ = tokio::time::timeout(limit, TASKS.wait()).await;
    // Other apps in the same process (tests) may still start clean-ups.
    TASKS.reopen();
    TASKS.len()
}
