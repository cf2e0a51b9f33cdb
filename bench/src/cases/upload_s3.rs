//! Case 2 (and the S3 memory of case 3): one large upload to S3 (s3s-fs)
//! vs. a direct aws-sdk-s3 multipart upload of the same bytes, then 64
//! concurrent 64 MiB redeems for memory.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;

use super::large_redeem;
use crate::load::Connection;
use crate::report::Row;
use crate::requests::{issue_tokens, redeem_request, upload_photo};
use crate::servers::{S3_BUCKET, S3Server, Server};
use crate::{CONNECTIONS, Cli, MIB};

/// The receiver's default part size and part buffers. It sends up to
/// `PARTS_IN_FLIGHT - 1` parts at once while filling the next; the direct
/// upload sends as many at once, with the same part size.
const PART_SIZE: u64 = 8 * MIB;
const PARTS_IN_FLIGHT: usize = 4;

/// The baseline of case 2: the same bytes straight to S3 with aws-sdk-s3,
/// in parts of `part_size`, same parts in flight. Returns how long its
/// CompleteMultipartUpload took (case 7's floor for completing a file).
pub async fn direct_multipart(
    client: &aws_sdk_s3::Client,
    key: &str,
    size: u64,
    part_size: u64,
) -> anyhow::Result<std::time::Duration> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let created = client.create_multipart_upload().bucket(S3_BUCKET).key(key).send().await?;
    let upload_id = created.upload_id().context("no upload id")?.to_owned();
    let part = Bytes::from(vec![0x5a; part_size as usize]);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut parts = Vec::new();
    let count = size.div_ceil(part_size);
    for number in 1..=count as i32 {
        let length = (size - (number as u64 - 1) * part_size).min(part_size) as usize;
        while in_flight.len() >= PARTS_IN_FLIGHT - 1 {
            parts.push(in_flight.join_next().await.context("a part")???);
        }
        let request = client
            .upload_part()
            .bucket(S3_BUCKET)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(aws_sdk_s3::primitives::ByteStream::from(part.slice(..length)));
        in_flight.spawn(async move {
            let sent = request.send().await?;
            let part = CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_owned))
                .build();
            Ok::<_, anyhow::Error>(part)
        });
    }
    while let Some(done) = in_flight.join_next().await {
        parts.push(done??);
    }
    parts.sort_by_key(|p| p.part_number());
    let completing = Instant::now();
    client
        .complete_multipart_upload()
        .bucket(S3_BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await?;
    Ok(completing.elapsed())
}

/// Case 2 (and the S3 memory of case 3): one large redeem to S3 vs. the
/// same bytes uploaded directly; then 64 concurrent 64 MiB redeems.
pub async fn upload_s3(cli: &Cli) -> anyhow::Result<Vec<Row>> {
    let size = cli.size_mib * MIB;
    let (mut rates, mut direct_rates, mut memory, mut concurrent_memory) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..cli.runs {
        eprintln!("upload-s3: run {} of {}", run + 1, cli.runs);
        let s3 = S3Server::start().await?;
        let (rate, peak) = large_redeem(&s3.backend(), size).await?;
        rates.push(rate);
        memory.push(peak);

        let client = s3.client().await;
        let started = Instant::now();
        direct_multipart(&client, &format!("direct-{run}"), size, PART_SIZE).await?;
        direct_rates.push(size as f64 / MIB as f64 / started.elapsed().as_secs_f64());

        // 64 concurrent 64 MiB redeems on a fresh receiver.
        let dir = tempfile::tempdir_in(".")?;
        let receiver = Server::receiver(dir.path(), &s3.backend())?;
        let photo = upload_photo(&receiver.address, dir.path()).await?;
        let tokens = issue_tokens(&receiver.address, dir.path(), &photo, 1, CONNECTIONS).await?;
        let (idle, _) = receiver.memory_kib();
        let mut uploads = tokio::task::JoinSet::new();
        for token in tokens {
            let address = receiver.address.clone();
            uploads.spawn(async move {
                let mut connection = Connection::open(&address).await?;
                let (status, _) = connection.send(redeem_request(&address, &token, 64 * MIB)).await?;
                anyhow::ensure!(status == 200, "a concurrent redeem answered {status}");
                Ok(())
            });
        }
        while let Some(done) = uploads.join_next().await {
            done??;
        }
        let (_, peak) = receiver.memory_kib();
        concurrent_memory.push(peak.saturating_sub(idle) as f64 / 1024.0);
    }
    let bound = 64 + CONNECTIONS as u64 * (PART_SIZE / MIB) * PARTS_IN_FLIGHT as u64;
    Ok(vec![
        Row {
            case: "2. upload to S3 (s3s-fs)".into(),
            metric: "throughput",
            unit: "MiB/s",
            samples: rates,
            baseline: Some(("direct aws-sdk-s3 multipart", direct_rates)),
            target: Some("ratio >= 0.9".into()),
        },
        Row {
            case: "3. memory, upload to S3".into(),
            metric: "peak RSS above idle",
            unit: "MiB",
            samples: memory,
            baseline: None,
            target: Some("<= 64 MiB".into()),
        },
        Row {
            case: "3. memory, 64 x 64 MiB to S3".into(),
            metric: "peak RSS above idle",
            unit: "MiB",
            samples: concurrent_memory,
            baseline: None,
            target: Some(format!("<= {bound} MiB")),
        },
    ])
}
