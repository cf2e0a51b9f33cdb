//! Case 7: one large file uploaded by the Resumable.js protocol (three
//! chunks in flight, chunks of 8 MiB and of 1 MiB) against the same file
//! in one request to the same backend; the receiver's peak memory, and how
//! long the last chunk (sent alone, once every other is stored) takes to be
//! answered: its upload plus the file's completion.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::bail;

use super::{direct_multipart, large_redeem};
use crate::load::Connection;
use crate::report::Row;
use crate::requests::{chunk_request, photo_and_token};
use crate::servers::{S3Server, Server};
use crate::{Cli, MIB};

/// Chunks the libraries send at once (`simultaneousUploads`).
const IN_FLIGHT: usize = 3;

/// What one chunked upload measured.
struct Chunked {
    rate: f64,
    peak_mib: f64,
    last_chunk_secs: f64,
}

/// Uploads `size` bytes in chunks of `chunk` through a fresh receiver on
/// `backend`: every chunk but the last, `IN_FLIGHT` at once, then the last.
async fn chunked_redeem(
    backend: &[(&'static str, String)],
    size: u64,
    chunk: u64,
) -> anyhow::Result<Chunked> {
    let dir = tempfile::tempdir_in(".")?;
    let receiver = Server::receiver(dir.path(), backend)?;
    let token = photo_and_token(&receiver.address, dir.path(), 1).await?;
    let (idle, _) = receiver.memory_kib();
    let count = (size / chunk).max(1);
    let next = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (next, address, token) = (Arc::clone(&next), receiver.address.clone(), token.clone());
        senders.spawn(async move {
            let mut connection = Connection::open(&address).await?;
            loop {
                let number = next.fetch_add(1, Ordering::SeqCst);
                if number >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                let (status, answer) =
                    connection.send(chunk_request(&address, &token, number, chunk, size)).await?;
                if status != 200 || &answer[..] != b"ok" {
                    bail!("chunk {number} answered {status}: {}", String::from_utf8_lossy(&answer));
                }
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let last_started = Instant::now();
    let mut connection = Connection::open(&receiver.address).await?;
    let (status, answer) =
        connection.send(chunk_request(&receiver.address, &token, count, chunk, size)).await?;
    let last_chunk_secs = last_started.elapsed().as_secs_f64();
    let elapsed = started.elapsed().as_secs_f64();
    if status != 200 || &answer[..] != b"OK\n" {
        bail!("the last chunk answered {status}: {}", String::from_utf8_lossy(&answer));
    }
    let (_, peak) = receiver.memory_kib();
    Ok(Chunked {
        rate: size as f64 / MIB as f64 / elapsed,
        peak_mib: peak.saturating_sub(idle) as f64 / 1024.0,
        last_chunk_secs,
    })
}

/// The S3 requests small chunks cost, made directly with aws-sdk-s3: each
/// `chunk`-byte chunk put as an object of its own (`IN_FLIGHT` at once),
/// then each group of `per_part` read back into one part, then the
/// completion. Returns MiB/s: the ceiling of the staged path on this server.
async fn direct_staged(
    client: &aws_sdk_s3::Client,
    size: u64,
    chunk: u64,
    per_part: u64,
) -> anyhow::Result<f64> {
    use crate::servers::S3_BUCKET;
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let started = Instant::now();
    let count = size / chunk;
    let body = bytes::Bytes::from(vec![0x5a; chunk as usize]);
    let mut puts = tokio::task::JoinSet::new();
    for number in 0..count {
        while puts.len() >= IN_FLIGHT {
            puts.join_next().await.expect("a put")??;
        }
        let request = client
            .put_object()
            .bucket(S3_BUCKET)
            .key(format!("staged/{number}"))
            .body(ByteStream::from(body.clone()));
        puts.spawn(async move { request.send().await.map(drop) });
    }
    while let Some(done) = puts.join_next().await {
        done??;
    }
    let created = client.create_multipart_upload().bucket(S3_BUCKET).key("staged-whole").send().await?;
    let upload_id = created.upload_id().unwrap_or_default().to_owned();
    let mut parts = Vec::new();
    for (index, group) in (0..count).collect::<Vec<_>>().chunks(per_part as usize).enumerate() {
        let mut part = bytes::BytesMut::new();
        for number in group {
            let got = client.get_object().bucket(S3_BUCKET).key(format!("staged/{number}")).send().await?;
            part.extend_from_slice(&got.body.collect().await?.into_bytes());
        }
        let number = index as i32 + 1;
        let sent = client
            .upload_part()
            .bucket(S3_BUCKET)
            .key("staged-whole")
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(part.freeze()))
            .send()
            .await?;
        parts.push(
            CompletedPart::builder().part_number(number).set_e_tag(sent.e_tag().map(str::to_owned)).build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(S3_BUCKET)
        .key("staged-whole")
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await?;
    Ok(size as f64 / MIB as f64 / started.elapsed().as_secs_f64())
}

/// Case 7 on local files, and on S3 (s3s-fs) when `with_s3`.
pub async fn chunked(cli: &Cli, with_s3: bool) -> anyhow::Result<Vec<Row>> {
    let size = cli.size_mib * MIB;
    let mut rows = Vec::new();
    let backends: &[(&'static str, bool)] =
        if with_s3 { &[("local files", false), ("S3", true)] } else { &[("local files", false)] };
    for &(name, s3) in backends {
        let (mut single, mut large, mut small) = (Vec::new(), Vec::new(), Vec::new());
        // S3's own CompleteMultipartUpload of the same parts: the floor of
        // completing a file there (s3s-fs copies the parts into one file).
        let (mut complete_large, mut complete_small) = (Vec::new(), Vec::new());
        let mut staged_directly = Vec::new();
        for run in 0..cli.runs {
            eprintln!("chunked ({name}): run {} of {}", run + 1, cli.runs);
            let s3_server = if s3 { Some(S3Server::start().await?) } else { None };
            let backend = s3_server.as_ref().map(S3Server::backend).unwrap_or_default();
            single.push(large_redeem(&backend, size).await?.0);
            large.push(chunked_redeem(&backend, size, 8 * MIB).await?);
            small.push(chunked_redeem(&backend, size, MIB).await?);
            if let Some(server) = &s3_server {
                let client = server.client().await;
                let key = format!("direct-{run}");
                complete_large.push(direct_multipart(&client, &key, size, 8 * MIB).await?.as_secs_f64());
                complete_small.push(direct_multipart(&client, &key, size, 5 * MIB).await?.as_secs_f64());
                staged_directly.push(direct_staged(&client, size, MIB, 5).await?);
            }
        }
        let cases = [
            ("8 MiB", &large, "ratio >= 0.9", complete_large),
            ("1 MiB", &small, "ratio >= 0.7", complete_small),
        ];
        for (chunk, runs, target, floor) in cases {
            let label = |what: &str| format!("7. chunked to {name}, {chunk} chunks{what}");
            rows.push(Row {
                case: label(""),
                metric: "throughput",
                unit: "MiB/s",
                samples: runs.iter().map(|r| r.rate).collect(),
                baseline: Some(("the same file in one request", single.clone())),
                target: Some(target.into()),
            });
            if chunk == "1 MiB" && !staged_directly.is_empty() {
                rows.push(Row {
                    case: label(", against its S3 requests made directly"),
                    metric: "throughput",
                    unit: "MiB/s",
                    samples: runs.iter().map(|r| r.rate).collect(),
                    baseline: Some(("the same staging requests by aws-sdk-s3", staged_directly.clone())),
                    target: None,
                });
            }
            rows.push(Row {
                case: label(": memory"),
                metric: "peak RSS above idle",
                unit: "MiB",
                samples: runs.iter().map(|r| r.peak_mib).collect(),
                baseline: None,
                target: Some("<= 64 MiB".into()),
            });
            let floor = (!floor.is_empty()).then_some(("the S3 server's own CompleteMultipartUpload", floor));
            rows.push(Row {
                case: label(": last chunk"),
                metric: "answer after the last chunk",
                unit: "s",
                samples: runs.iter().map(|r| r.last_chunk_secs).collect(),
                baseline: floor,
                target: Some("<= 1 s".into()),
            });
        }
    }
    Ok(rows)
}
