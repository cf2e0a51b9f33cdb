//! Case 5: 64 KiB redeems per second at 64 connections, with p50 and p99
//! latency, on the embedded default and on Redis + S3 (s3s-fs).

use std::path::Path;
use std::sync::Arc;

use crate::Cli;
use crate::load::load;
use crate::report::Row;
use crate::requests::{issue_tokens, redeem_request, upload_photo};
use crate::servers::{Redis, S3Server, Server};

/// Case 5: 64 KiB redeems per second at 64 connections, with latencies, on
/// the embedded default and on Redis + S3 (s3s-fs).
pub async fn small_uploads(cli: &Cli) -> anyhow::Result<Vec<Row>> {
    let mut rows = small_uploads_on(cli, "5. 64 KiB redeems, embedded", &[]).await?;
    let (redis, s3) = (Redis::start()?, S3Server::start().await?);
    let mut backend = redis.backend();
    backend.extend(s3.backend());
    rows.extend(small_uploads_on(cli, "5. 64 KiB redeems, Redis + S3", &backend).await?);
    Ok(rows)
}

async fn small_uploads_on(
    cli: &Cli,
    case: &'static str,
    backend: &[(&'static str, String)],
) -> anyhow::Result<Vec<Row>> {
    let mut rates = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for run in 0..cli.runs {
        eprintln!("{case}: run {} of {}", run + 1, cli.runs);
        let dir = tempfile::tempdir_in(".")?;
        let receiver = Server::receiver(dir.path(), backend)?;
        let photo = upload_photo(&receiver.address, dir.path()).await?;
        let (rate, mut latencies) =
            redeem_load(&receiver, dir.path(), &photo, cli.seconds, 64 * 1024).await?;
        latencies.sort_by(f64::total_cmp);
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] * 1000.0;
        rates.push(rate);
        p50.push(at(0.50));
        p99.push(at(0.99));
    }
    let row = |metric, unit, samples| Row {
        case: case.into(),
        metric,
        unit,
        samples,
        baseline: None,
        target: None,
    };
    Ok(vec![
        row("redeems/s at 64 connections", "req/s", rates),
        row("p50 latency", "ms", p50),
        row("p99 latency", "ms", p99),
    ])
}

/// Redeems of `size` bytes into `photo` for `seconds` at 64 connections;
/// returns redeems per second and the latencies (s).
pub async fn redeem_load(
    receiver: &Server,
    dir: &Path,
    photo: &str,
    seconds: u64,
    size: u64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    // One token allows at most 100 uploads: a pool of tokens, each used by
    // 100 consecutive requests, enough for the whole measurement.
    let needed = (seconds as usize * 20_000).div_ceil(100);
    let tokens = Arc::new(issue_tokens(&receiver.address, dir, photo, 100, needed).await?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let address = receiver.address.clone();
    load(&receiver.address, seconds, 200, move || {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        redeem_request(&address, &tokens[(n / 100).min(tokens.len() - 1)], size)
    })
    .await
}
