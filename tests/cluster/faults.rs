//! Backend faults: Redis gone, paused or restarted around a redeem, the S3
//! server killed in the middle of an upload.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use upload_receiver::config::Config;
use upload_receiver::storage::ObjectStore;

use crate::common::*;
use crate::multipart::MultipartBody;
use crate::processes;
use crate::servers;

#[tokio::test]
async fn with_redis_stopped_a_redeem_gets_a_fast_503_and_nothing_reaches_s3() {
    let mut redis = processes::redis();
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.state.redis_url = Some(format!("redis://127.0.0.1:{}/", redis.port));
    config.state.redis_timeout_secs = 1;
    let bucket = config.storage.bucket.clone().unwrap();
    let app = PhotoApp::on(spawn_app_from(config).await).await;
    let token = app.token(&[]).await;

    redis.kill();
    let started = Instant::now();
    let response = app.redeem(&token, &vec![3u8; 200_000], &[]).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(servers::s3_keys(&bucket).await.len(), 1, "only the original is in the bucket");
    assert!(servers::s3_open_uploads(&bucket).await.is_empty());
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("state store"));
}

#[tokio::test]
async fn with_the_s3_server_killed_mid_upload_the_client_gets_the_error_and_the_slot_comes_back() {
    let mut s3 = processes::moto(0);
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.storage.endpoint = Some(endpoint.clone());
    config.storage.timeout_secs = 2;
    let bucket = config.storage.bucket.clone().unwrap();
    servers::create_bucket_at(&endpoint, &bucket).await;
    let app = PhotoApp::on(spawn_app_from(config).await).await;
    let token = app.token(&[("return_url", "http://www.example.com/done")]).await;

    // 20 MiB declared; 6 MiB sent (one 5 MiB part goes to S3); then S3 dies.
    let address = app.running.as_ref().unwrap().address;
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = MultipartBody::new("B").field("replace_token", &token).file_head("file", "big.mp4");
    let total = head.len() + 20 * 1024 * 1024 + head.closing().len();
    socket.write_all(head.post_head(REDEEM, address, total).as_bytes()).await.unwrap();
    socket.write_all(&head.into_bytes()).await.unwrap();
    socket.write_all(&vec![b'v'; 6 * 1024 * 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s3.kill();
    // Keep sending until the receiver answers (it stops reading on failure).
    let rest = vec![b'v'; 14 * 1024 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(20), socket.write_all(&rest)).await;
    let mut answer = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(answer.contains("error_message="), "{answer}");

    // The S3 server returns (empty, as moto keeps nothing on disk): nothing
    // of ours is open there, and the token's one slot is usable again.
    let _s3 = processes::moto(s3.port);
    servers::create_bucket_at(&endpoint, &bucket).await;
    assert!(servers::s3_open_uploads_at(&endpoint, &bucket).await.is_empty());
    let response = app.redeem(&token, b"retry", &[]).await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("photo_id="), "{location}");
}

/// An app on Redis state at `redis` (1 s timeouts) and S3, with one photo;
/// returns it with a token of `max_uploads` for the photo.
async fn app_on_redis(redis: &processes::Owned, max_uploads: u32) -> (PhotoApp, String) {
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.state.redis_url = Some(format!("redis://127.0.0.1:{}/", redis.port));
    config.state.redis_timeout_secs = 1;
    let app = PhotoApp::on(spawn_app_from(config).await).await;
    let token = app.token(&[("max_uploads", &max_uploads.to_string())]).await;
    (app, token)
}

/// Committed uploads of `token` and versions of the photo, read from the store.
async fn counts(app: &PhotoApp, token: &str) -> (u32, usize) {
    (app.uploads_used(token).await, app.photo().await.versions.len())
}

#[tokio::test]
async fn a_paused_redis_fails_the_reserve_with_503_and_nothing_is_applied_twice() {
    let redis = processes::redis();
    let (app, token) = app_on_redis(&redis, 3).await;

    redis.signal("STOP");
    let started = Instant::now();
    let response = app.redeem(&token, b"during the pause", &[]).await;
    let waited = started.elapsed();
    redis.signal("CONT");
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());
    assert!(waited < Duration::from_secs(3), "refused after the 1 s timeout, not hung: {waited:?}");

    // The reserve sent during the pause runs when Redis resumes, and is
    // withdrawn right after: the refused redeem holds no slot, so all three
    // uploads of the token remain.
    assert_eq!(counts(&app, &token).await, (0, 1), "nothing was committed");
    for attempt in 0..3 {
        let response = app.redeem(&token, format!("after {attempt}").as_bytes(), &[]).await;
        assert_eq!(response.status(), 200, "upload {attempt} of 3");
    }
    assert_eq!(counts(&app, &token).await, (3, 4), "each counted once");
    assert_eq!(app.redeem(&token, b"one too many", &[]).await.status(), 404);
}

#[tokio::test]
async fn a_restarted_redis_serves_the_next_redeem_and_counts_once() {
    let redis = processes::redis_in(tempfile::tempdir().unwrap(), processes::free_port(), true);
    let (app, token) = app_on_redis(&redis, 2).await;
    assert_eq!(app.redeem(&token, b"before", &[]).await.status(), 200);

    // A restart empties the script cache and drops every connection; the
    // very next redeem meets the dead connection, and is served anyway.
    let _redis = redis.restart_redis();
    let response = app.redeem(&token, b"after the restart", &[]).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(counts(&app, &token).await, (2, 3), "both uploads counted once");
    assert_eq!(app.redeem(&token, b"one too many", &[]).await.status(), 404);
}

/// An app on the shared Redis and S3 at `endpoint` (2 s S3 call timeout,
/// 5 MiB parts), with one photo and a one-upload token that reports to
/// `http://www.example.com/done`.
async fn app_on_s3(endpoint: &str) -> (PhotoApp, String) {
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.storage.endpoint = Some(endpoint.to_owned());
    config.storage.timeout_secs = 2;
    config.storage.part_size = 5 * 1024 * 1024;
    servers::create_bucket_at(endpoint, config.storage.bucket.as_ref().unwrap()).await;
    let app = PhotoApp::on(spawn_app_from(config).await).await;
    let token = app.token(&[("return_url", "http://www.example.com/done")]).await;
    (app, token)
}

#[tokio::test]
async fn an_s3_server_paused_mid_part_times_out_gives_the_slot_back_and_leaves_no_orphan() {
    let s3 = processes::moto(0);
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let (app, token) = app_on_s3(&endpoint).await;
    let bucket = app.config.storage.bucket.clone().unwrap();

    // 12 MiB: the first 5 MiB part goes out while the body still arrives;
    // the server is paused as soon as the multipart upload exists.
    let body = vec![b'p'; 12 * 1024 * 1024];
    let upload = tokio::spawn({
        let app = TestApp::handle_of(&app);
        let token = token.clone();
        async move { app.redeem(&token, &body, &[]).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while servers::s3_open_uploads_at(&endpoint, &bucket).await.is_empty() {
        assert!(Instant::now() < deadline, "no multipart upload began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s3.signal("STOP");
    let started = Instant::now();
    let response = upload.await.unwrap();
    let waited = started.elapsed();
    s3.signal("CONT");
    assert_eq!(response.status(), 303);
    let message = redirect_error(&response).expect("an error outcome for the site");
    assert!(message.contains("could not be stored"), "{message}");
    // storage.timeout_secs (2 s) bounds the call, the SDK's retries included.
    assert!(waited < Duration::from_secs(4), "the outcome came {waited:?} after S3 stopped");
    assert_eq!(counts(&app, &token).await, (0, 1), "the slot is back, no version");

    // The abort sent while the server was paused may have failed; the sweep
    // (here with no minimum age) finishes the job.
    let mut config = app.config.storage.clone();
    config.endpoint = Some(endpoint.clone());
    let store =
        upload_receiver::storage::s3::S3ObjectStore::new(&config, upload_receiver::tasks::Cleanup::default())
            .await
            .unwrap();
    store.sweep(Duration::ZERO).await.unwrap();
    assert!(servers::s3_open_uploads_at(&endpoint, &bucket).await.is_empty(), "no orphan after the sweep");
    assert_eq!(app.redeem(&token, b"again", &[]).await.status(), 303, "the slot is usable again");
}

/// A relay in front of an S3 server that answers every
/// `CompleteMultipartUpload` itself with `200 OK` and an error document, as
/// S3 does when a completion fails after the response has begun.
async fn complete_fails_with_200(upstream: String) -> (String, Arc<AtomicUsize>) {
    use http_body_util::BodyExt;
    let completions = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&completions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let client = reqwest::Client::new();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (client, upstream, counted) = (client.clone(), upstream.clone(), Arc::clone(&counted));
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (client, upstream, counted) =
                        (client.clone(), upstream.clone(), Arc::clone(&counted));
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
                        let is_complete = parts.method == hyper::Method::POST && target.contains("uploadId=");
                        if is_complete {
                            counted.fetch_add(1, Ordering::SeqCst);
                            let error = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message><RequestId>1</RequestId></Error>";
                            return Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(error),
                            )));
                        }
                        let mut forwarded =
                            client.request(parts.method.clone(), format!("{upstream}{target}"));
                        for (name, value) in &parts.headers {
                            forwarded = forwarded.header(name, value);
                        }
                        let answer = forwarded.body(body).send().await.expect("the S3 server answers");
                        let mut response = hyper::Response::builder().status(answer.status());
                        for (name, value) in answer.headers() {
                            response = response.header(name, value);
                        }
                        let bytes = answer.bytes().await.expect("the S3 server's body");
                        Ok(response.body(http_body_util::Full::new(bytes)).unwrap())
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (format!("http://{address}"), completions)
}

#[tokio::test]
async fn an_s3_complete_answered_200_with_an_error_is_a_failure() {
    let endpoint = servers::s3_endpoint();
    let (relay, completions) = complete_fails_with_200(endpoint.clone()).await;
    let (app, token) = app_on_s3(&relay).await;
    let bucket = app.config.storage.bucket.clone().unwrap();

    let response = app.redeem(&token, &vec![b'c'; 6 * 1024 * 1024], &[]).await;
    assert_eq!(response.status(), 303);
    let message = redirect_error(&response).expect("an error outcome, not a success");
    assert!(message.contains("could not be stored"), "{message}");
    // The SDK takes the 200 for the error it is, and retries it as one.
    let completions = completions.load(Ordering::SeqCst);
    assert!(completions >= 1, "the parts went through and the completion met the error: {completions}");
    assert_eq!(counts(&app, &token).await, (0, 1), "no version recorded, the slot back");
    // The failed upload was aborted (through the relay, which passes aborts on).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !servers::s3_open_uploads_at(&endpoint, &bucket).await.is_empty() {
        assert!(Instant::now() < deadline, "the failed multipart upload was left open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(servers::s3_keys(&bucket).await.len(), 1, "only the original object exists");
}

/// The real binary as a second instance on the same Redis prefix and bucket
/// as `config`, in a data directory of its own; killed when dropped.
/// Returns it with its address.
pub fn second_instance(config: &Config, extra_env: &[(&str, &str)]) -> (processes::Owned, String) {
    use std::io::BufRead;
    let data_dir = tempfile::tempdir().unwrap();
    let storage = &config.storage;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_upload-receiver"))
        .envs(extra_env.iter().copied())
        .env("UPLOAD_RECEIVER__SERVER__LISTEN", "127.0.0.1:0")
        .env("UPLOAD_RECEIVER__DATA_DIR", data_dir.path())
        .env("UPLOAD_RECEIVER__STATE__REDIS_URL", config.state.redis_url.as_deref().unwrap())
        .env("UPLOAD_RECEIVER__STATE__KEY_PREFIX", &config.state.key_prefix)
        .env("UPLOAD_RECEIVER__STATE__SLOT_LEASE_SECS", config.state.slot_lease_secs.to_string())
        .env("UPLOAD_RECEIVER__STORAGE__BUCKET", storage.bucket.as_deref().unwrap())
        .env("UPLOAD_RECEIVER__STORAGE__ENDPOINT", storage.endpoint.as_deref().unwrap())
        .env("UPLOAD_RECEIVER__STORAGE__FORCE_PATH_STYLE", "true")
        .env("UPLOAD_RECEIVER__STORAGE__PART_SIZE", storage.part_size.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the upload-receiver binary starts");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let address = first
        .trim()
        .strip_prefix("upload-receiver listening on http://")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let port = address.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).expect("a port");
    (processes::Owned::adopt(child, data_dir, port), address)
}

/// Starts a redeem of a `total`-byte JPEG on `address` and sends its first
/// `sent` bytes; returns the socket, still open, and the bytes that end the
/// body once the rest of the file is sent.
async fn partial_redeem(
    address: &str,
    token: &str,
    total: usize,
    sent: usize,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = MultipartBody::new("B").field("replace_token", token).file_head("file", "big.jpg");
    let closing = head.closing();
    let length = head.len() + total + closing.len();
    socket.write_all(head.post_head(REDEEM, address, length).as_bytes()).await.unwrap();
    socket.write_all(&head.into_bytes()).await.unwrap();
    let mut file = JPEG_SIGNATURE.to_vec();
    file.resize(sent, b'k');
    socket.write_all(&file).await.unwrap();
    (socket, closing)
}

#[tokio::test]
async fn one_of_two_instances_killed_mid_upload_leaves_the_other_unaffected_and_the_sweep_cleans_up() {
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.storage.part_size = 5 * 1024 * 1024;
    config.state.slot_lease_secs = 3;
    let bucket = config.storage.bucket.clone().unwrap();
    let endpoint = config.storage.endpoint.clone().unwrap();
    let survivor = spawn_app_from(config.clone()).await;
    let (mut doomed, doomed_address) = second_instance(&config, &[]);
    let survivor = PhotoApp::on(survivor).await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        tokens.push(survivor.token(&[("max_uploads", "1")]).await);
    }
    let (on_doomed, on_survivor) = (tokens[0].clone(), tokens[1].clone());

    // Both instances are mid-upload; the doomed one has sent a part to S3.
    let (mut doomed_socket, _) =
        partial_redeem(&doomed_address, &on_doomed, 12 * 1024 * 1024, 6 * 1024 * 1024).await;
    let survivor_address = survivor.running.as_ref().unwrap().address.to_string();
    let (mut survivor_socket, survivor_closing) =
        partial_redeem(&survivor_address, &on_survivor, 12 * 1024 * 1024, 6 * 1024 * 1024).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while servers::s3_open_uploads_at(&endpoint, &bucket).await.len() < 2 {
        assert!(Instant::now() < deadline, "both multipart uploads began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    let mut cut = Vec::new();
    let _ = doomed_socket.read_to_end(&mut cut).await;

    // The survivor's upload finishes as if nothing happened.
    survivor_socket.write_all(&vec![b'k'; 6 * 1024 * 1024]).await.unwrap();
    survivor_socket.write_all(&survivor_closing).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = survivor_socket.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(counts(&survivor, &on_survivor).await, (1, 2));

    // The dead instance left its multipart upload open; the sweep aborts it.
    assert_eq!(servers::s3_open_uploads_at(&endpoint, &bucket).await.len(), 1, "the orphan is there");
    let store = upload_receiver::storage::s3::S3ObjectStore::new(
        &survivor.config.storage,
        upload_receiver::tasks::Cleanup::default(),
    )
    .await
    .unwrap();
    assert_eq!(store.sweep(Duration::ZERO).await.unwrap(), 1);
    assert!(servers::s3_open_uploads_at(&endpoint, &bucket).await.is_empty());
    // Its slot comes back when the lease (3 s) runs out.
    assert_eq!(
        survivor.redeem(&on_doomed, b"\xff\xd8\xff\xe0 retry", &[]).await.status(),
        404,
        "still leased"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(survivor.redeem(&on_doomed, b"\xff\xd8\xff\xe0 retry", &[]).await.status(), 200);
}
