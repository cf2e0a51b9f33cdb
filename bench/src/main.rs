//! The benchmark harness: runs the receiver and baselines on loopback and
//! prints their figures side by side.
//!
//! `cargo run --release -p upload-receiver-bench -- all` (see the README's
//! Performance section). Every server runs as a child process of this
//! binary (the receiver is the same `App` as `upload-receiver`), so its
//! memory can be read from `/proc`; the load comes from this process.
//!
//! This file holds the command line and the dispatch; `serve` what the
//! child processes run, `servers` how they are started, `load` and
//! `requests` the client side, `cases` the measurements and `report` the
//! table and the JSON.

mod cases;
mod load;
mod report;
mod requests;
mod serve;
mod servers;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks upload-receiver against baselines on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Case,
    /// Runs per case (the table shows median, min and max).
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Size of the large upload, in MiB.
    #[arg(long, global = true, default_value_t = 1024)]
    size_mib: u64,
    /// Seconds each request-rate measurement lasts.
    #[arg(long, global = true, default_value_t = 10)]
    seconds: u64,
    /// Where the JSON results go.
    #[arg(long, global = true, default_value = "bench-results.json")]
    json: PathBuf,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum Case {
    /// Every case below.
    All,
    /// One large upload to the local-files backend vs. a raw HTTP-to-disk sink.
    UploadFs,
    /// One large upload to S3 (s3s-fs) vs. a direct aws-sdk-s3 multipart
    /// upload; then 64 concurrent 64 MiB uploads, for memory.
    UploadS3,
    /// Signed get-replace-token requests per second vs. a hello-world server.
    Tokens,
    /// 64 KiB redeems per second at 64 connections, with p50/p99 latency.
    Small,
    /// 4 KiB redeems into a photo with 1,000 versions vs. one with 1.
    Versions,
    /// One large file by the Resumable.js protocol (8 MiB and 1 MiB chunks,
    /// three in flight) vs. one request, on local files and S3 (s3s-fs).
    Chunked,
    /// The same on local files only (no s3s-fs needed).
    ChunkedFs,
    /// Background callbacks queued during a site's outage, delivered after
    /// it, on the embedded store and on Redis.
    Deliveries,
    /// Internal: run the receiver with the configuration in the environment.
    #[command(hide = true)]
    ServeReceiver,
    /// Internal: a minimal receiver that writes request bodies to a file.
    #[command(hide = true)]
    ServeSink {
        dir: PathBuf,
        /// Also compute the SHA-256 of each body, as the receiver does.
        #[arg(long)]
        sha256: bool,
    },
    /// Internal: a minimal hello-world server.
    #[command(hide = true)]
    ServeHello,
}

/// Concurrent connections of the request-rate cases.
const CONNECTIONS: usize = 64;
const MIB: u64 = 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match &cli.command {
        Case::ServeReceiver => runtime.block_on(serve::serve_receiver()),
        Case::ServeSink { dir, sha256 } => {
            runtime.block_on(serve::serve_minimal(Some((dir.clone(), *sha256))))
        }
        Case::ServeHello => runtime.block_on(serve::serve_minimal(None)),
        case => runtime.block_on(run(case, &cli)),
    }
}

async fn run(case: &Case, cli: &Cli) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if matches!(case, Case::All | Case::UploadFs) {
        rows.extend(cases::upload_fs(cli).await?);
    }
    if matches!(case, Case::All | Case::UploadS3) {
        rows.extend(cases::upload_s3(cli).await?);
    }
    if matches!(case, Case::All | Case::Tokens) {
        rows.extend(cases::tokens(cli).await?);
    }
    if matches!(case, Case::All | Case::Small) {
        rows.extend(cases::small_uploads(cli).await?);
    }
    if matches!(case, Case::All | Case::Versions) {
        rows.extend(cases::versions(cli).await?);
    }
    if matches!(case, Case::All | Case::Chunked | Case::ChunkedFs) {
        rows.extend(cases::chunked(cli, *case != Case::ChunkedFs).await?);
    }
    if matches!(case, Case::All | Case::Deliveries) {
        rows.extend(cases::deliveries(cli).await?);
    }
    report::print_table(&rows);
    report::write_json(&rows, &cli.json)?;
    println!("\nresults written to {}", cli.json.display());
    Ok(())
}
