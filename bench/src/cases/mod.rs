//! The measurements, one file per case of the README's Performance table,
//! and the large redeem that cases 1 and 2 (and 3, their memory) share.

mod chunked;
mod deliveries;
mod small;
mod tokens;
mod upload_fs;
mod upload_s3;
mod versions;

use std::time::Instant;

use anyhow::bail;

pub use chunked::chunked;
pub use deliveries::deliveries;
pub use small::small_uploads;
pub use tokens::tokens;
pub use upload_fs::upload_fs;
pub use upload_s3::{direct_multipart, upload_s3};
pub use versions::versions;

use crate::MIB;
use crate::load::Connection;
use crate::requests::{photo_and_token, redeem_request};
use crate::servers::Server;

/// Redeems one `size`-byte file through a fresh receiver on `backend`;
/// returns the throughput (MiB/s) and the peak RSS above idle (MiB).
async fn large_redeem(backend: &[(&'static str, String)], size: u64) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir_in(".")?;
    let receiver = Server::receiver(dir.path(), backend)?;
    let token = photo_and_token(&receiver.address, dir.path(), 1).await?;
    let (idle, _) = receiver.memory_kib();
    let started = Instant::now();
    let mut connection = Connection::open(&receiver.address).await?;
    let (status, answer) = connection.send(redeem_request(&receiver.address, &token, size)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    if status != 200 {
        bail!("the redeem answered {status}: {}", String::from_utf8_lossy(&answer));
    }
    let (_, peak) = receiver.memory_kib();
    Ok((size as f64 / MIB as f64 / elapsed, peak.saturating_sub(idle) as f64 / 1024.0))
}
