//! Case 6: a redeem into a photo with 1,000 versions against one into a
//! photo with a single version, on the embedded default and on Redis (the
//! files on local disk in both, so that the figure is the state store's):
//! recording a version must not cost more as a photo's history grows.

use std::sync::Arc;

use super::small::redeem_load;
use crate::Cli;
use crate::load::Connection;
use crate::report::Row;
use crate::requests::{issue_tokens, redeem_request, upload_photo};
use crate::servers::{Redis, Server};

/// The long history the case builds before it measures.
const VERSIONS: usize = 1_000;
/// Each redeem's file; small, so the figure is the cost of recording it.
const SIZE: u64 = 4 * 1024;

pub async fn versions(cli: &Cli) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![versions_on(cli, "6. 1,000 versions, embedded", &[]).await?];
    let redis = Redis::start()?;
    rows.push(versions_on(cli, "6. 1,000 versions, Redis", &redis.backend()).await?);
    Ok(rows)
}

async fn versions_on(
    cli: &Cli,
    case: &'static str,
    backend: &[(&'static str, String)],
) -> anyhow::Result<Row> {
    let (mut long, mut short) = (Vec::new(), Vec::new());
    for run in 0..cli.runs {
        eprintln!("{case}: run {} of {}", run + 1, cli.runs);
        let dir = tempfile::tempdir_in(".")?;
        let receiver = Server::receiver(dir.path(), backend)?;
        let fresh = upload_photo(&receiver.address, dir.path()).await?;
        let old = upload_photo(&receiver.address, dir.path()).await?;
        give_history(&receiver, dir.path(), &old).await?;
        // Alternate which goes first, so that warming up favours neither.
        let (first, second) = if run % 2 == 0 { (&fresh, &old) } else { (&old, &fresh) };
        let first_rate = redeem_load(&receiver, dir.path(), first, cli.seconds, SIZE).await?.0;
        let second_rate = redeem_load(&receiver, dir.path(), second, cli.seconds, SIZE).await?.0;
        let (fresh_rate, old_rate) =
            if run % 2 == 0 { (first_rate, second_rate) } else { (second_rate, first_rate) };
        short.push(fresh_rate);
        long.push(old_rate);
    }
    Ok(Row {
        case: case.into(),
        metric: "4 KiB redeems/s, 1,000 versions",
        unit: "req/s",
        samples: long,
        baseline: Some(("a new photo", short)),
        target: Some("≈ 1: as fast as into a new photo".into()),
    })
}

/// Brings `photo` to [`VERSIONS`] versions through redeems on 8 connections.
async fn give_history(receiver: &Server, dir: &std::path::Path, photo: &str) -> anyhow::Result<()> {
    let tokens = issue_tokens(&receiver.address, dir, photo, 100, VERSIONS.div_ceil(100)).await?;
    let uploads: Vec<String> = tokens.iter().flat_map(|t| std::iter::repeat_n(t.clone(), 100)).collect();
    let uploads = Arc::new(uploads[..VERSIONS - 1].to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..8 {
        let (uploads, address) = (Arc::clone(&uploads), receiver.address.clone());
        tasks.spawn(async move {
            let mut connection = Connection::open(&address).await?;
            for token in uploads.iter().skip(lane).step_by(8) {
                let (status, body) = connection.send(redeem_request(&address, token, SIZE)).await?;
                anyhow::ensure!(status == 200, "answered {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
