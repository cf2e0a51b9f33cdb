//! Case 4: signed get-replace-token requests per second vs. a hyper hello
//! world, on the embedded default and on Redis.

use std::sync::Arc;

use crate::Cli;
use crate::load::load;
use crate::report::Row;
use crate::requests::{credentials, get, signed_get, signed_target, upload_photo};
use crate::servers::{Redis, Server};

/// Signed requests prepared per second of the token-issuance case, above
/// any rate seen here; past them, requests are signed as they go.
const PRESIGNED_PER_SECOND: usize = 60_000;

/// Case 4: signed get-replace-token requests per second (each with its own
/// nonce, so each writes the nonce and the token) vs. hello world, on the
/// embedded default and on Redis.
pub async fn tokens(cli: &Cli) -> anyhow::Result<Vec<Row>> {
    let redis = Redis::start()?;
    Ok(vec![
        tokens_on(cli, "4. token issuance, embedded", &[], "ratio >= 0.5").await?,
        tokens_on(cli, "4. token issuance, Redis", &redis.backend(), "ratio >= 0.3").await?,
    ])
}

async fn tokens_on(
    cli: &Cli,
    case: &'static str,
    backend: &[(&'static str, String)],
    target: &str,
) -> anyhow::Result<Row> {
    let mut rates = Vec::new();
    let mut hello_rates = Vec::new();
    for run in 0..cli.runs {
        eprintln!("{case}: run {} of {}", run + 1, cli.runs);
        let dir = tempfile::tempdir_in(".")?;
        let receiver = Server::receiver(dir.path(), backend)?;
        let credential = Arc::new(credentials(dir.path())?);
        let photo = upload_photo(&receiver.address, dir.path()).await?;
        let address = receiver.address.clone();
        let query = format!("/api/photo/get-replace-token?photo_id={photo}");
        // Signed before the clock starts, so that the load generator does
        // the same work per request as for hello world: build and send.
        let presigned = PRESIGNED_PER_SECOND * cli.seconds as usize;
        eprintln!("{case}: signing {presigned} requests");
        let targets: Arc<Vec<String>> =
            Arc::new((0..presigned).map(|_| signed_target("GET", &address, &credential, &query)).collect());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rate, _) = load(&receiver.address, cli.seconds, 200, move || {
            match targets.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                Some(target) => get(&address, target),
                None => signed_get(&address, &credential, &query),
            }
        })
        .await?;
        rates.push(rate);
        drop(receiver);

        let hello = Server::start(&["serve-hello"], &[])?;
        let address = hello.address.clone();
        let (rate, _) = load(&hello.address, cli.seconds, 200, move || get(&address, "/")).await?;
        hello_rates.push(rate);
    }
    Ok(Row {
        case: case.into(),
        metric: "requests/s at 64 connections",
        unit: "req/s",
        samples: rates,
        baseline: Some(("hyper hello world", hello_rates)),
        target: Some(target.into()),
    })
}
