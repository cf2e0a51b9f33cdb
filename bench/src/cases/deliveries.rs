//! Case 8: outcome delivery after a site's outage. [`UPLOADS`] background-
//! mode uploads are committed while the site's callback endpoint answers
//! `503`; then it recovers. Measured, on the embedded store and on Redis:
//! the time from the recovery to the last callback delivered (with
//! `callback.retry_initial_delay_secs = 1`: bound by when the pending
//! retries are due), and the callbacks per second that makes; the baseline
//! is the same number of requests made straight to the site, [`PARALLEL`]
//! at once.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::Cli;
use crate::load::Connection;
use crate::report::Row;
use crate::requests::{credentials, full, redeem_request, signed_get, upload_photo};
use crate::servers::{Redis, Server};

/// Uploads committed during the outage.
const UPLOADS: usize = 400;
/// Connections making them, and the baseline's requests at once.
const PARALLEL: usize = 32;
/// Uploads per token (the most a token may have).
const PER_TOKEN: usize = 100;

pub async fn deliveries(cli: &Cli) -> anyhow::Result<Vec<Row>> {
    let mut rows = deliveries_on(cli, "8. deliveries after an outage, embedded", &[]).await?;
    let redis = Redis::start()?;
    rows.extend(deliveries_on(cli, "8. deliveries after an outage, Redis", &redis.backend()).await?);
    Ok(rows)
}

async fn deliveries_on(
    cli: &Cli,
    case: &'static str,
    backend: &[(&'static str, String)],
) -> anyhow::Result<Vec<Row>> {
    let (mut rates, mut recoveries, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..cli.runs {
        eprintln!("{case}: run {} of {}", run + 1, cli.runs);
        let site = Site::start().await?;
        let dir = tempfile::tempdir_in(".")?;
        let mut env = backend.to_vec();
        env.extend([
            ("UPLOAD_RECEIVER__CALLBACK__ALLOWED_HOSTS", "[\"127.0.0.1\"]".to_owned()),
            ("UPLOAD_RECEIVER__CALLBACK__RETRY_INITIAL_DELAY_SECS", "1".to_owned()),
            ("UPLOAD_RECEIVER__CALLBACK__TIMEOUT_SECS", "2".to_owned()),
        ]);
        let receiver = Server::receiver(dir.path(), &env)?;
        commit_during_outage(&receiver, dir.path(), &site).await?;
        let recovered = Instant::now();
        site.up.store(true, Ordering::SeqCst);
        let delivered = site.wait_for(UPLOADS, Duration::from_secs(300)).await?;
        let drained = delivered[UPLOADS - 1].duration_since(recovered).as_secs_f64();
        recoveries.push(drained);
        rates.push(UPLOADS as f64 / drained.max(1e-3));
        direct.push(site.direct_rate().await?);
    }
    Ok(vec![
        Row {
            case: case.into(),
            metric: "callbacks delivered/s after recovery",
            unit: "req/s",
            samples: rates,
            baseline: Some(("the same requests, direct", direct)),
            target: None,
        },
        Row {
            case: case.into(),
            metric: "recovery to last delivered",
            unit: "s",
            samples: recoveries,
            baseline: None,
            target: Some("≤ 2.5 s: the pending retries' due times (1 s, then 2 s, ±25 %)".into()),
        },
    ])
}

/// Commits [`UPLOADS`] background-mode uploads while `site` is down; each
/// answered `ok …` at once, its callback left for a retry.
async fn commit_during_outage(receiver: &Server, dir: &std::path::Path, site: &Site) -> anyhow::Result<()> {
    let photo = upload_photo(&receiver.address, dir).await?;
    let credential = credentials(dir)?;
    let return_url = format!("http://{}/cb", site.address);
    let query = format!(
        "/api/photo/get-replace-token?photo_id={photo}&max_uploads={PER_TOKEN}&valid_minutes=60&background_return_p=1&return_url={}",
        url::form_urlencoded::byte_serialize(return_url.as_bytes()).collect::<String>()
    );
    let mut connection = Connection::open(&receiver.address).await?;
    let mut tokens = Vec::new();
    for _ in 0..UPLOADS.div_ceil(PER_TOKEN) {
        let (_, answer) = connection.send(signed_get(&receiver.address, &credential, &query)).await?;
        let text = String::from_utf8_lossy(&answer);
        let token = text
            .split("<replace_token>")
            .nth(1)
            .and_then(|rest| rest.split("</replace_token>").next())
            .ok_or_else(|| anyhow::anyhow!("no token issued: {text}"))?;
        tokens.push(token.to_owned());
    }
    let tokens = Arc::new(tokens);
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..PARALLEL {
        let (address, tokens) = (receiver.address.clone(), Arc::clone(&tokens));
        lanes.spawn(async move {
            let mut connection = Connection::open(&address).await?;
            for upload in (lane..UPLOADS).step_by(PARALLEL) {
                let token = &tokens[upload / PER_TOKEN];
                let (status, body) = connection.send(redeem_request(&address, token, 4096)).await?;
                anyhow::ensure!(
                    status == 200 && body.starts_with(b"ok "),
                    "answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = lanes.join_next().await {
        done??;
    }
    Ok(())
}

/// The site: `503` while down, `200` once up, recording when each request
/// it answered `200` came.
struct Site {
    address: String,
    up: Arc<AtomicBool>,
    delivered: Arc<Mutex<Vec<Instant>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Site {
    async fn start() -> anyhow::Result<Site> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (up, delivered) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (serving_up, serving_delivered) = (Arc::clone(&up), Arc::clone(&delivered));
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (up, delivered) = (Arc::clone(&serving_up), Arc::clone(&serving_delivered));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        let status = if up.load(Ordering::SeqCst) {
                            delivered
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(Instant::now());
                            200
                        } else {
                            503
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a status");
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Site { address, up, delivered, server })
    }

    /// Waits until `count` requests were answered `200`; their times.
    async fn wait_for(&self, count: usize, within: Duration) -> anyhow::Result<Vec<Instant>> {
        let deadline = Instant::now() + within;
        loop {
            let delivered = self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if delivered.len() >= count {
                return Ok(delivered);
            }
            anyhow::ensure!(Instant::now() < deadline, "{} of {count} callbacks delivered", delivered.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`UPLOADS`] requests to the site made directly, [`PARALLEL`] at once
    /// on connections of their own: requests per second.
    async fn direct_rate(&self) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..PARALLEL {
            let address = self.address.clone();
            lanes.spawn(async move {
                for _ in (lane..UPLOADS).step_by(PARALLEL) {
                    // A fresh connection each, as the receiver's callbacks make.
                    let mut connection = Connection::open(&address).await?;
                    let request = hyper::Request::get("/cb?photo_id=1")
                        .header("host", &address)
                        .body(full(Bytes::new()))?;
                    connection.send(request).await?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(done) = lanes.join_next().await {
            done??;
        }
        Ok(UPLOADS as f64 / started.elapsed().as_secs_f64())
    }
}
