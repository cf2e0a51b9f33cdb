//! The benchmark harness: runs the receiver and baselines on loopback and
//! prints their figures side by side.
//!
//! `cargo run --release --bin bench -- all` (see the README's Performance
//! section). Every server runs as a child process of this binary (the
//! receiver is the same `App` as `upload-receiver`), so its memory can be
//! read from `/proc`; the load comes from this process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::json;
use upload_receiver::auth::signature;
use upload_receiver::domain::{ALPHANUMERIC, random_string, unix_now};

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

/// Signed requests prepared per second of the token-issuance case, above
/// any rate seen here; past them, requests are signed as they go.
const PRESIGNED_PER_SECOND: usize = 60_000;

/// Concurrent connections of the request-rate cases.
const CONNECTIONS: usize = 64;
const MIB: u64 = 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match &cli.command {
        Case::ServeReceiver => runtime.block_on(serve_receiver()),
        Case::ServeSink { dir, sha256 } => runtime.block_on(serve_minimal(Some((dir.clone(), *sha256)))),
        Case::ServeHello => runtime.block_on(serve_minimal(None)),
        case => runtime.block_on(run(case, &cli)),
    }
}

// ---------------------------------------------------------------- servers

async fn serve_receiver() -> anyhow::Result<()> {
    let config = upload_receiver::Config::load(None)?;
    let app = upload_receiver::App::build(config).await?;
    println!("listening {}", app.local_addr());
    app.run_until(std::future::pending()).await;
    Ok(())
}

/// The baselines: HTTP/1.1 on hyper with no routing, parsing or auth. With
/// a directory, each request body is written to a file there as it arrives;
/// without, every request is answered "hello". `sha256` adds the one piece
/// of the receiver's per-byte work that no upload can skip, for evidence.
async fn serve_minimal(sink: Option<(PathBuf, bool)>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let sink = sink.map(Arc::new);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let sink = sink.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        if let Some((dir, sha256)) = sink.as_deref() {
                            use sha2::Digest;
                            use tokio::io::AsyncWriteExt;
                            let path = dir.join(random_string(ALPHANUMERIC, 16));
                            let mut file = tokio::fs::File::create(&path).await?;
                            let mut body = request.into_body();
                            let mut hasher = sha2::Sha256::new();
                            while let Some(frame) = body.frame().await {
                                if let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() {
                                    if *sha256 {
                                        hasher.update(&data);
                                    }
                                    file.write_all(&data).await?;
                                }
                            }
                            std::hint::black_box(hasher.finalize());
                            file.sync_all().await?;
                            let _ = tokio::fs::remove_file(&path).await;
                        }
                        Ok::<_, std::io::Error>(hyper::Response::new(Full::new(Bytes::from_static(b"hello"))))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A child process, killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child server process, killed when dropped.
struct Server {
    child: Reaped,
    address: String,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Server> {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let address =
            line.trim().strip_prefix("listening ").context("the server printed no address")?.to_owned();
        Ok(Server { child: Reaped(child), address })
    }

    /// Resident memory now and at its peak, in KiB (from /proc).
    fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Starts a receiver with its data directory in `dir`, on the embedded
    /// default, or on the backends `backend` names.
    fn receiver(dir: &Path, backend: &[(&'static str, String)]) -> anyhow::Result<Server> {
        let mut env = vec![
            ("UPLOAD_RECEIVER__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("UPLOAD_RECEIVER__DATA_DIR", dir.display().to_string()),
            ("UPLOAD_RECEIVER__SERVER__MAX_CONNECTIONS", "1024".to_owned()),
        ];
        env.extend(backend.iter().cloned());
        Server::start(&["serve-receiver"], &env)
    }
}

/// A redis-server of the harness's own on a free port, stopped when dropped.
struct Redis {
    _child: Reaped,
    url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server (Debian package redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Redis { _child: Reaped(child), url: format!("redis://127.0.0.1:{port}/"), _dir: dir })
    }

    fn backend(&self) -> Vec<(&'static str, String)> {
        vec![("UPLOAD_RECEIVER__STATE__REDIS_URL", self.url.clone())]
    }
}

// ---------------------------------------------------------------- clients

/// One HTTP/1.1 connection, for sequential requests.
struct Connection {
    sender:
        hyper::client::conn::http1::SendRequest<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>,
}

impl Connection {
    async fn open(address: &str) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { sender })
    }

    /// Sends a request and reads the whole answer; returns status and body.
    async fn send(
        &mut self,
        request: hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn full(bytes: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// `total` bytes of a cheap pattern, in 256 KiB chunks, as a request body.
fn generated_body(
    prefix: Bytes,
    total: u64,
    suffix: Bytes,
) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    let chunk = Bytes::from(vec![0x5a; 256 * 1024]);
    let full_chunks = total / chunk.len() as u64;
    let rest = (total % chunk.len() as u64) as usize;
    let parts = std::iter::once(prefix)
        .chain(std::iter::repeat_n(chunk.clone(), full_chunks as usize))
        .chain(std::iter::once(chunk.slice(..rest)))
        .chain(std::iter::once(suffix))
        .map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
    StreamBody::new(futures_util::stream::iter(parts)).boxed()
}

const BOUNDARY: &str = "bench-boundary-7d1c";

/// Every benchmark file begins with an MP4 `ftyp` box, so that it passes
/// the receiver's default media types (`image/*`, `video/*`) like a video.
const MP4_SIGNATURE: &[u8] = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom";

/// A multipart redeem request for `token` with a `size`-byte file.
fn redeem_request(
    address: &str,
    token: &str,
    size: u64,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    let prefix = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"replace_token\"\r\n\r\n{token}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let prefix = [prefix.as_bytes(), MP4_SIGNATURE].concat();
    let suffix = format!("\r\n--{BOUNDARY}--\r\n");
    let generated = size.checked_sub(MP4_SIGNATURE.len() as u64).expect("files larger than their signature");
    let length = prefix.len() as u64 + generated + suffix.len() as u64;
    hyper::Request::post("/api/photo/redeem-replace-token")
        .header("host", address)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", length)
        .body(generated_body(Bytes::from(prefix), generated, Bytes::from(suffix)))
        .expect("a valid request")
}

/// The receiver's generated `write` credentials, from its data directory.
fn credentials(dir: &Path) -> anyhow::Result<upload_receiver::auth::Credential> {
    Ok(upload_receiver::auth::credentials::load_or_generate(dir)?.0)
}

/// A signed GET of `path_and_query` on `address`.
fn signed_get(
    address: &str,
    credential: &upload_receiver::auth::Credential,
    path_and_query: &str,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    get(address, &signed_target("GET", address, credential, path_and_query))
}

/// A plain GET of `target` (path and query) on `address`.
fn get(
    address: &str,
    target: &str,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    hyper::Request::get(target).header("host", address).body(full(Bytes::new())).expect("a valid request")
}

/// The signed path and query of a `method` request of `path_and_query` on
/// `address` (parameters in the query), with a fresh nonce.
fn signed_target(
    method: &str,
    address: &str,
    credential: &upload_receiver::auth::Credential,
    path_and_query: &str,
) -> String {
    let url = url::Url::parse(&format!("http://{address}{path_and_query}")).expect("a valid URL");
    let signed = signature::signed_url(
        method,
        &url,
        (&credential.consumer_key, &credential.access_token),
        (credential.consumer_secret.expose(), credential.access_token_secret.expose()),
        unix_now(),
        &random_string(ALPHANUMERIC, 24),
    );
    let signed = url::Url::parse(&signed).expect("a signed URL");
    format!("{}?{}", signed.path(), signed.query().unwrap_or_default())
}

/// Uploads a photo through the signed API; returns its id.
async fn upload_photo(address: &str, dir: &Path) -> anyhow::Result<String> {
    let credential = credentials(dir)?;
    let mut connection = Connection::open(address).await?;
    let body = [
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n")
            .as_bytes(),
        MP4_SIGNATURE,
        format!("\r\n--{BOUNDARY}--\r\n").as_bytes(),
    ]
    .concat();
    let request = hyper::Request::post(signed_target("POST", address, &credential, "/api/photo/upload"))
        .header("host", address)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(full(body))?;
    let (_, answer) = connection.send(request).await?;
    between(&answer, "<photo_id>", "</photo_id>").context("upload failed")
}

/// Issues `count` tokens of `max_uploads` each for `photo_id`.
async fn issue_tokens(
    address: &str,
    dir: &Path,
    photo_id: &str,
    max_uploads: u32,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let credential = credentials(dir)?;
    let mut connection = Connection::open(address).await?;
    let query = format!(
        "/api/photo/get-replace-token?photo_id={photo_id}&max_uploads={max_uploads}&valid_minutes=1440"
    );
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        let (_, answer) = connection.send(signed_get(address, &credential, &query)).await?;
        tokens.push(between(&answer, "<replace_token>", "</replace_token>").context("no token issued")?);
    }
    Ok(tokens)
}

/// Uploads a photo and issues one token for it.
async fn photo_and_token(address: &str, dir: &Path, max_uploads: u32) -> anyhow::Result<String> {
    let photo_id = upload_photo(address, dir).await?;
    let mut tokens = issue_tokens(address, dir, &photo_id, max_uploads, 1).await?;
    Ok(tokens.remove(0))
}

fn between(bytes: &[u8], start: &str, end: &str) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_owned())
}

// ---------------------------------------------------------------- cases

/// One row of the results table.
struct Row {
    case: &'static str,
    metric: &'static str,
    unit: &'static str,
    samples: Vec<f64>,
    baseline: Option<(&'static str, Vec<f64>)>,
    target: Option<String>,
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

async fn run(case: &Case, cli: &Cli) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if matches!(case, Case::All | Case::UploadFs) {
        rows.extend(upload_fs(cli).await?);
    }
    if matches!(case, Case::All | Case::UploadS3) {
        rows.extend(upload_s3(cli).await?);
    }
    if matches!(case, Case::All | Case::Tokens) {
        rows.extend(tokens(cli).await?);
    }
    if matches!(case, Case::All | Case::Small) {
        rows.extend(small_uploads(cli).await?);
    }
    print_table(&rows);
    write_json(&rows, &cli.json)?;
    println!("\nresults written to {}", cli.json.display());
    Ok(())
}

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
async fn upload_fs(cli: &Cli) -> anyhow::Result<Vec<Row>> {
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
            case: "1. upload to local files",
            metric: "throughput",
            unit: "MiB/s",
            samples: receiver_rates,
            baseline: Some(("raw HTTP-to-disk sink", sink_rates.clone())),
            target: Some("ratio >= 0.8".into()),
        },
        Row {
            case: "1b. evidence: the sink + SHA-256",
            metric: "throughput",
            unit: "MiB/s",
            samples: hashing_sink_rates,
            baseline: Some(("raw HTTP-to-disk sink", sink_rates)),
            target: None,
        },
        Row {
            case: "3. memory, upload to local files",
            metric: "peak RSS above idle",
            unit: "MiB",
            samples: memory,
            baseline: None,
            target: Some("<= 64 MiB".into()),
        },
    ])
}

/// An s3s-fs server (objects as files on disk) with one bucket, stopped when
/// dropped. The binary comes from `S3S_FS` or the `PATH`; install it with
/// `cargo install s3s-fs --version 0.14.1 --features binary`.
struct S3Server {
    _child: Reaped,
    endpoint: String,
    _dir: tempfile::TempDir,
}

const S3_KEY: &str = "bench-access-key";
const S3_SECRET: &str = "bench-secret-key";
const S3_BUCKET: &str = "bench";

impl S3Server {
    async fn start() -> anyhow::Result<S3Server> {
        let binary = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir_in(".")?;
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(dir.path())
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start {binary}: `cargo install s3s-fs --version 0.14.1 --features binary`, or set S3S_FS")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let server =
            S3Server { _child: Reaped(child), endpoint: format!("http://127.0.0.1:{port}"), _dir: dir };
        server.client().await.create_bucket().bucket(S3_BUCKET).send().await?;
        Ok(server)
    }

    async fn client(&self) -> aws_sdk_s3::Client {
        let credentials = aws_sdk_s3::config::Credentials::new(S3_KEY, S3_SECRET, None, None, "bench");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The receiver's environment for this server.
    fn backend(&self) -> Vec<(&'static str, String)> {
        vec![
            ("UPLOAD_RECEIVER__STORAGE__BUCKET", S3_BUCKET.to_owned()),
            ("UPLOAD_RECEIVER__STORAGE__ENDPOINT", self.endpoint.clone()),
            ("UPLOAD_RECEIVER__STORAGE__FORCE_PATH_STYLE", "true".to_owned()),
            ("UPLOAD_RECEIVER__LIMITS__MAX_CONCURRENT_UPLOADS", "128".to_owned()),
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}

/// The receiver's default part size and part buffers. It sends up to
/// `PARTS_IN_FLIGHT - 1` parts at once while filling the next; the direct
/// upload sends as many at once, with the same part size.
const PART_SIZE: u64 = 8 * MIB;
const PARTS_IN_FLIGHT: usize = 4;

/// The baseline of case 2: the same bytes straight to S3 with aws-sdk-s3,
/// same part size, same parts in flight.
async fn direct_multipart(client: &aws_sdk_s3::Client, key: &str, size: u64) -> anyhow::Result<()> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let created = client.create_multipart_upload().bucket(S3_BUCKET).key(key).send().await?;
    let upload_id = created.upload_id().context("no upload id")?.to_owned();
    let part = Bytes::from(vec![0x5a; PART_SIZE as usize]);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut parts = Vec::new();
    let count = size.div_ceil(PART_SIZE);
    for number in 1..=count as i32 {
        let length = (size - (number as u64 - 1) * PART_SIZE).min(PART_SIZE) as usize;
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
    client
        .complete_multipart_upload()
        .bucket(S3_BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await?;
    Ok(())
}

/// Case 2 (and the S3 memory of case 3): one large redeem to S3 vs. the
/// same bytes uploaded directly; then 64 concurrent 64 MiB redeems.
async fn upload_s3(cli: &Cli) -> anyhow::Result<Vec<Row>> {
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
        direct_multipart(&client, &format!("direct-{run}"), size).await?;
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
            case: "2. upload to S3 (s3s-fs)",
            metric: "throughput",
            unit: "MiB/s",
            samples: rates,
            baseline: Some(("direct aws-sdk-s3 multipart", direct_rates)),
            target: Some("ratio >= 0.9".into()),
        },
        Row {
            case: "3. memory, upload to S3",
            metric: "peak RSS above idle",
            unit: "MiB",
            samples: memory,
            baseline: None,
            target: Some("<= 64 MiB".into()),
        },
        Row {
            case: "3. memory, 64 x 64 MiB to S3",
            metric: "peak RSS above idle",
            unit: "MiB",
            samples: concurrent_memory,
            baseline: None,
            target: Some(format!("<= {bound} MiB")),
        },
    ])
}

/// Runs `CONNECTIONS` connections for `seconds`, each sending the requests
/// `make` builds one after another; returns requests per second and the
/// latencies (s) of those answered `expect`.
async fn load<F>(address: &str, seconds: u64, expect: u16, make: F) -> anyhow::Result<(f64, Vec<f64>)>
where
    F: Fn() -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>
        + Send
        + Sync
        + 'static,
{
    let make = Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (make, address) = (Arc::clone(&make), address.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut connection = Connection::open(&address).await?;
            while Instant::now() < deadline {
                let started = Instant::now();
                let (status, body) = connection.send(make()).await?;
                if status != expect {
                    bail!("answered {status}: {}", String::from_utf8_lossy(&body));
                }
                latencies.push(started.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}

/// Case 4: signed get-replace-token requests per second (each with its own
/// nonce, so each writes the nonce and the token) vs. hello world, on the
/// embedded default and on Redis.
async fn tokens(cli: &Cli) -> anyhow::Result<Vec<Row>> {
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
        case,
        metric: "requests/s at 64 connections",
        unit: "req/s",
        samples: rates,
        baseline: Some(("hyper hello world", hello_rates)),
        target: Some(target.into()),
    })
}

/// Case 5: 64 KiB redeems per second at 64 connections, with latencies, on
/// the embedded default and on Redis + S3 (s3s-fs).
async fn small_uploads(cli: &Cli) -> anyhow::Result<Vec<Row>> {
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
        // One token allows at most 100 uploads: a pool of tokens, each used
        // by 100 consecutive requests, enough for the whole measurement.
        let photo = upload_photo(&receiver.address, dir.path()).await?;
        let needed = (cli.seconds as usize * 20_000).div_ceil(100);
        let tokens = Arc::new(issue_tokens(&receiver.address, dir.path(), &photo, 100, needed).await?);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let address = receiver.address.clone();
        let (rate, mut latencies) = load(&receiver.address, cli.seconds, 200, move || {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            redeem_request(&address, &tokens[(n / 100).min(tokens.len() - 1)], 64 * 1024)
        })
        .await?;
        latencies.sort_by(f64::total_cmp);
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] * 1000.0;
        rates.push(rate);
        p50.push(at(0.50));
        p99.push(at(0.99));
    }
    let row = |metric, unit, samples| Row { case, metric, unit, samples, baseline: None, target: None };
    Ok(vec![
        row("redeems/s at 64 connections", "req/s", rates),
        row("p50 latency", "ms", p50),
        row("p99 latency", "ms", p99),
    ])
}

// ---------------------------------------------------------------- output

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<34} {:<30} {:>10} {:>10} {:>10} {:>10}  {:<24} {:>10} {:>7}  target",
        "case", "metric", "median", "min", "max", "unit", "baseline", "median", "ratio"
    );
    for row in rows {
        let (name, baseline_median, ratio) = match &row.baseline {
            Some((name, samples)) => {
                let b = median(samples);
                (*name, format!("{b:.1}"), format!("{:.2}", median(&row.samples) / b))
            }
            None => ("-", "-".into(), "-".into()),
        };
        println!(
            "{:<34} {:<30} {:>10.1} {:>10.1} {:>10.1} {:>10}  {:<24} {:>10} {:>7}  {}",
            row.case,
            row.metric,
            median(&row.samples),
            min(&row.samples),
            max(&row.samples),
            row.unit,
            name,
            baseline_median,
            ratio,
            row.target.as_deref().unwrap_or("-")
        );
    }
}

fn write_json(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "case": r.case,
                "metric": r.metric,
                "unit": r.unit,
                "samples": r.samples,
                "median": median(&r.samples),
                "min": min(&r.samples),
                "max": max(&r.samples),
                "baseline": r.baseline.as_ref().map(|(name, s)| json!({
                    "name": name, "samples": s, "median": median(s), "min": min(s), "max": max(s),
                    "ratio_of_medians": median(&r.samples) / median(s),
                    "ratio_min": min(&r.samples) / max(s),
                    "ratio_max": max(&r.samples) / min(s),
                })),
                "target": r.target,
            })
        })
        .collect();
    let document = json!({
        "machine": machine(),
        "unix_time": unix_now(),
        "rows": rows,
    });
    std::fs::write(path, serde_json::to_string_pretty(&document)?)?;
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
    })
}
