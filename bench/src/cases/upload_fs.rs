//! Case 1 (and the local-files memory of case 3): one large upload to the
//! local-files backend vs. the raw HTTP-to-disk sink, with and without
//! SHA-256.

use std::time::Instant;

use bytes::Bytes;

use super::large_redeem;
use crate::load::Connection;
use crate::report::Row;
use crate::requests::generated_body;
use crate::servers::Server;
use crate::{Cli, MIB};

/// Posts `size` bytes to a fresh sink started with `flags`; returns MiB/s.
async fn sink_upload(size: u64, flags: &[&str]) -> anyhow::Result<f64> {
    let sink_dir = tempfile::tempdir_in(".")?;
    let dir = sink_dir.path().display().to_string();
    let args: Vec<&str> = ["serve-sink", dir.as_str()].into_iter().chain(flags.iter().copied()).collect();
    let sink = Server::start(&args, &[])?;
    let started = Instant::now();
    let mut connection = Connection::open(&sink.address).await?;
    let request = hyper::Request::post("/")
        .header("host", sink.address.as_str())
        .header("content-length", size)
        .body(generated_body(Bytes::new(), size, Bytes::new()))?;
    connection.send(request).await?;
    Ok(size as f64 / MIB as f64 / started.elapsed().as_secs_f64())
}

/// Case 1 (and the memory of case 3): one large upload to the local-files
/// backend vs. the same bytes posted to the sink, which writes them to the
/// same disk without parsing anything.
pub async fn upload_fs(cli: &Cli) -> anyhow::Result<Vec<Row>> {
    let size = cli.size_mib * MIB;
    let mut receiver_rates = Vec::new();
    let mut sink_rates = Vec::new();
    let mut hashing_sink_rates = Vec::new();
    let mut memory = Vec::new();
    for run in 0..cli.runs {
        eprintln!("upload-fs: run {} of {}", run + 1, cli.runs);
        let (rate, peak) = large_redeem(&[], size).await?;
        receiver_rates.push(rate);
        memory.push(peak);
        sink_rates.push(sink_upload(size, &[]).await?);
        hashing_sink_rates.push(sink_upload(size, &["--sha256"]).await?);
    }
    Ok(vec![
        Row {
            case: "1. upload to local files".into(),
            metric: "throughput",
            unit: "MiB/s",
            samples: receiver_rates,
            baseline: Some(("raw HTTP-to-disk sink", sink_rates.clone())),
            target: Some("ratio >= 0.8".into()),
        },
        Row {
            case: "1b. evidence: the sink + SHA-256".into(),
            metric: "throughput",
            unit: "MiB/s",
            samples: hashing_sink_rates,
            baseline: Some(("raw HTTP-to-disk sink", sink_rates)),
            target: None,
        },
        Row {
            case: "3. memory, upload to local files".into(),
            metric: "peak RSS above idle",
            unit: "MiB",
            samples: memory,
            baseline: None,
            target: Some("<= 64 MiB".into()),
        },
    ])
}
