//! The HTTP server itself: routes, request ids, timeouts, connection cap,
//! health checks, cross-domain policies, and the binary's start-up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::multipart::{MultipartBody, post_head};
use crate::servers;

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let app = spawn_app().await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready\n");
}

#[tokio::test]
async fn readiness_fails_when_the_object_store_is_unusable() {
    let app = spawn_app().await;
    match &app.config.storage.bucket {
        // The bucket disappears.
        Some(bucket) => {
            servers::s3_client().await.delete_bucket().bucket(bucket).send().await.unwrap();
        }
        // The directory becomes a file.
        None => {
            let objects = app.data_dir().join("objects");
            std::fs::remove_dir_all(&objects).unwrap();
            std::fs::write(&objects, b"not a directory").unwrap();
        }
    }
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("object store"));
}

#[tokio::test]
async fn request_ids_are_kept_or_generated() {
    let app = spawn_app().await;
    let kept = app.http.get(app.url("/healthz")).header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "trace-42");
    let generated = app.http.get(app.url("/healthz")).send().await.unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 24);
    let evil = app.http.get(app.url("/healthz")).header("x-request-id", "a b").send().await.unwrap();
    assert_ne!(evil.headers()["x-request-id"], "a b");
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let app = spawn_app().await;
    assert_eq!(app.http.get(app.url("/api/nope")).send().await.unwrap().status(), 404);
    let put = app.http.put(app.url("/api/echo")).send().await.unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "GET, HEAD, POST");
    assert_eq!(app.http.post(app.url("/healthz")).send().await.unwrap().status(), 405);
}

#[tokio::test]
async fn the_cross_domain_policies_grant_nothing_at_the_root_and_the_configured_domains_under_api() {
    let app = spawn_app_with(|c| {
        c.site.crossdomain_allow = vec!["*.example.com".into(), "player.example.org".into()]
    })
    .await;
    let root = text(app.http.get(app.url("/crossdomain.xml"))).await;
    assert!(root.contains("<cross-domain-policy>"));
    assert!(!root.contains("allow-access-from"), "{root}");
    let api = text(app.http.get(app.url("/api/crossdomain.xml"))).await;
    assert!(api.contains("<allow-access-from domain=\"*.example.com\"/>"), "{api}");
    assert!(api.contains("<allow-access-from domain=\"player.example.org\"/>"), "{api}");
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed_at_the_header_timeout() {
    let app = spawn_app_with(|c| c.server.header_read_timeout_secs = 1).await;
    let mut socket = tokio::net::TcpStream::connect(app.running.as_ref().unwrap().address).await.unwrap();
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stayed open");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    // Meanwhile legitimate requests are served.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
    let app = spawn_app_with(|c| c.server.max_connections = 1).await;
    let address = app.running.as_ref().unwrap().address;
    let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
    first.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    assert!(first.read(&mut buf).await.unwrap() > 0, "the first connection is served");
    // The first connection stays open (keep-alive), holding the only slot.
    let second = reqwest::Client::new();
    let waiting =
        tokio::time::timeout(Duration::from_millis(700), second.get(app.url("/healthz")).send()).await;
    assert!(waiting.is_err(), "a second connection was served while the cap was reached");
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), second.get(app.url("/healthz")).send()).await;
    assert_eq!(served.expect("served once the slot is free").unwrap().status(), 200);
}

#[tokio::test]
async fn shutdown_answers_newcomers_503_and_lets_an_in_flight_request_finish() {
    let app = spawn_app().await;
    let address = app.running.as_ref().unwrap().address;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let writer = app.writer.clone();
    // An upload whose body is still arriving when shutdown begins.
    let request =
        app.signed_multipart(&writer, "/api/photo/upload", reqwest::multipart::Form::new()).build().unwrap();
    let authorization = request.headers()["authorization"].to_str().unwrap().to_owned();
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = MultipartBody::new("B").file("file", "a", b"hello");
    let content_type = body.content_type();
    let part = body.end();
    let headers = [
        ("Authorization", authorization),
        ("Content-Type", content_type),
        ("Content-Length", part.len().to_string()),
    ];
    socket.write_all(post_head("/api/photo/upload", address, &headers).as_bytes()).await.unwrap();
    socket.write_all(&part[..20]).await.unwrap();
    let inspection = app.running.as_ref().unwrap().inspect().clone();
    let mut app = app;
    let shutdown = tokio::spawn(app.running.take().unwrap().shutdown());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !inspection.is_shutting_down() {
        assert!(Instant::now() < deadline, "the shutdown began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Newcomers are sent elsewhere; the probes still answer.
    let late = raw_get(address, "/api/echo?a=1").await;
    assert!(late.starts_with("HTTP/1.1 503"), "{late}");
    assert!(late.to_ascii_lowercase().contains("connection: close"), "{late}");
    assert!(raw_get(address, "/readyz").await.starts_with("HTTP/1.1 503"));
    assert!(raw_get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
    socket.write_all(&part[20..]).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.contains("<photo_id>"), "{answer}");
    assert_ne!(xml_field(&answer, "photo_id").unwrap(), photo_id);
    tokio::time::timeout(Duration::from_secs(5), shutdown).await.expect("shutdown completes").unwrap();
}

/// A GET on a fresh connection; the whole answer, headers first.
async fn raw_get(address: std::net::SocketAddr, target: &str) -> String {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(format!("GET {target} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The 503 closes the connection; the probes keep it open, so read a while.
    let _ = tokio::time::timeout(Duration::from_millis(500), socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_upload_still_running_at_the_drain_deadline_is_cut_and_gives_its_slot_back() {
    let mut app = spawn_app_with(|config| {
        config.server.shutdown_drain_secs = 1;
        config.server.body_idle_timeout_secs = 60;
    })
    .await;
    let address = app.running.as_ref().unwrap().address;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let token = app.replace_token(&photo_id, &[("max_uploads", "1")]).await;
    let token: upload_receiver::domain::ReplaceToken = token.parse().unwrap();
    let objects_before = app.stored_objects().await;
    let inspection = app.running.as_ref().unwrap().inspect().clone();
    // A redeem that has its slot and sends 1 MiB of a 10 MiB file, then stalls.
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = MultipartBody::new("B").field("replace_token", token.as_str()).file_head("file", "a");
    let request_head = head.post_head(REDEEM, address, head.len() + 10 * 1024 * 1024);
    socket.write_all(&[request_head.into_bytes(), head.into_bytes()].concat()).await.unwrap();
    socket.write_all(&vec![b'v'; 1024 * 1024]).await.unwrap();
    app.wait_for_metric(SLOTS_RESERVED, 1.0).await;
    let status = inspection.token_status(&token).await.unwrap().unwrap();
    assert_eq!((status.uploads_used, status.uploads_in_flight), (0, 1));

    let started = Instant::now();
    app.running.take().unwrap().shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the drain deadline (1 s) and the clean-up bound the exit: {took:?}"
    );
    assert_eq!(app.stored_objects().await, objects_before, "nothing partial is left");
    let status = inspection.token_status(&token).await.unwrap().unwrap();
    assert_eq!(
        (status.uploads_used, status.uploads_in_flight),
        (0, 0),
        "the cut upload's slot is free again at once"
    );
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_upload-receiver"))
}

/// The binary on the embedded default in `data_dir`, on a free port, with
/// its standard output (the banner) piped.
fn spawn_binary(data_dir: &std::path::Path) -> std::process::Child {
    binary()
        .env("UPLOAD_RECEIVER__SERVER__LISTEN", "127.0.0.1:0")
        .env("UPLOAD_RECEIVER__DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_bad_configuration_key_stops_the_binary_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nheader_read_timeout_secs = 0\n").unwrap();
    let output = binary().args(["serve", "--config"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.header_read_timeout_secs"), "{stderr}");
}

#[test]
fn the_plain_binary_serves_on_the_embedded_default_and_prints_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_binary(dir.path());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let address = first
        .strip_prefix("upload-receiver listening on http://")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    // The banner ends with the Python example; read up to it.
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let last = line.contains("requests_oauthlib");
        printed.push(line);
        if last {
            break;
        }
    }
    let data = dir.path().display();
    assert_eq!(
        printed[0],
        format!("  state: embedded store in {data}/state.redb; files: local files in {data}/objects")
    );
    let generated = std::fs::read_to_string(dir.path().join("credentials.toml")).unwrap();
    let consumer_key_line = printed
        .iter()
        .find(|l| l.trim_start().starts_with("consumer_key"))
        .expect("the consumer key is printed");
    let consumer_key = consumer_key_line.split('=').nth(1).unwrap().trim();
    assert!(generated.contains(consumer_key));
    assert!(printed.iter().any(|l| l.contains("sign")), "an example of a signed call is printed");
    let health = std::net::TcpStream::connect(&address).map(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    // SIGTERM: the process drains and exits 0.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(health.unwrap().starts_with("HTTP/1.1 200"));
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_banner_names_redis_and_s3_when_they_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, prefix, endpoint) = (servers::redis_url(), servers::unique_prefix(), servers::s3_endpoint());
    let mut child = binary()
        .env("UPLOAD_RECEIVER__SERVER__LISTEN", "127.0.0.1:0")
        .env("UPLOAD_RECEIVER__DATA_DIR", dir.path())
        .env("UPLOAD_RECEIVER__STATE__REDIS_URL", &redis)
        .env("UPLOAD_RECEIVER__STATE__KEY_PREFIX", &prefix)
        .env("UPLOAD_RECEIVER__STORAGE__BUCKET", "banner-bucket")
        .env("UPLOAD_RECEIVER__STORAGE__ENDPOINT", &endpoint)
        .env("UPLOAD_RECEIVER__STORAGE__FORCE_PATH_STYLE", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("upload-receiver listening on http://"), "{first}");
    let second = lines.next().unwrap().unwrap();
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        second,
        format!(
            "  state: Redis at {redis} (key prefix {prefix:?}); files: S3 bucket banner-bucket at {endpoint} (region us-east-1)"
        )
    );
}

#[tokio::test]
async fn two_thousand_slowloris_sockets_are_closed_at_the_header_timeout_and_others_keep_their_latency() {
    const SOCKETS: usize = 2000;
    let app = spawn_app_with(|config| config.server.header_read_timeout_secs = 2).await;
    let address = app.running.as_ref().unwrap().address;
    let health = |app: &TestApp| {
        let request = app.http.get(app.url("/healthz"));
        async move {
            let started = Instant::now();
            assert_eq!(request.send().await.unwrap().status(), 200);
            started.elapsed()
        }
    };
    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(health(&app).await);
    }

    let attackers: Vec<_> = (0..SOCKETS)
        .map(|_| {
            tokio::spawn(async move {
                let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
                let opened = Instant::now();
                // One header byte at a time, never finishing.
                for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().cycle() {
                    if socket.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    let mut probe = [0u8; 1024];
                    match tokio::time::timeout(Duration::from_millis(500), socket.read(&mut probe)).await {
                        Ok(Ok(0) | Err(_)) => break, // closed by the server
                        Ok(Ok(_)) => {}              // an error answer; keep going until closed
                        Err(_) => {}                 // still open
                    }
                }
                opened.elapsed()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut during = Vec::new();
    for _ in 0..20 {
        during.push(health(&app).await);
    }
    let mut closed_after = Vec::new();
    for attacker in attackers {
        closed_after.push(attacker.await.unwrap());
    }
    before.sort();
    during.sort();
    closed_after.sort();
    let (median_before, median_during, last_closed) = (before[10], during[10], closed_after[SOCKETS - 1]);
    eprintln!(
        "health median {median_before:?} before, {median_during:?} during; slow sockets lived {:?} to {last_closed:?}",
        closed_after[0]
    );
    // The timeout (2 s), plus the attacker's 0.5 s probe, plus scheduling
    // on a machine busy with the other tests.
    assert!(closed_after[0] >= Duration::from_secs(2), "none closed early: {:?}", closed_after[0]);
    assert!(
        last_closed < Duration::from_secs(4),
        "every slow socket closed at the header timeout: {last_closed:?}"
    );
    assert!(
        median_during < median_before + Duration::from_millis(50),
        "legitimate requests kept their latency: {median_before:?} before, {median_during:?} during"
    );
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn hostile_bodies_leave_the_binarys_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_binary(dir.path());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let address = first.trim().strip_prefix("upload-receiver listening on http://").unwrap().to_owned();
    let client = reqwest::Client::new();
    let url = format!("http://{address}{REDEEM}");
    let token = "0123456789abcdef0123456789abcdef01234567";
    let warm = client.post(&url).header("content-type", "multipart/form-data; boundary=B").body("--B--\r\n");
    warm.send().await.unwrap();
    let (idle, _) = memory_kib(child.id());

    let mut fields = MultipartBody::new("B").field("replace_token", token);
    for i in 0..100_000 {
        fields = fields.field(&format!("f{i}"), "v");
    }
    let fields = fields.into_bytes();
    let text = MultipartBody::new("B").field_head("note").raw(&vec![b'n'; 16 * 1024 * 1024]).into_bytes();
    let mut headers = b"--B\r\nContent-Disposition: form-data; name=\"file\"".to_vec();
    headers.extend("; x=\"yyyyyyyy\"".repeat(1024 * 1024).as_bytes());
    for (case, body) in
        [("100,000 fields", fields), ("16 MiB of text", text), ("16 MiB of part headers", headers)]
    {
        for _ in 0..4 {
            let response = client
                .post(&url)
                .header("content-type", "multipart/form-data; boundary=B")
                .body(body.clone())
                .send()
                .await;
            // Refused at the cap; the rest may be cut off unread.
            if let Ok(response) = response {
                assert_eq!(response.status(), 400, "{case}");
            }
        }
        let (_, peak) = memory_kib(child.id());
        eprintln!("after {case}: peak {} KiB above idle", peak.saturating_sub(idle));
    }
    let (_, peak) = memory_kib(child.id());
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    child.wait().unwrap();
    let grew_mib = peak.saturating_sub(idle) as f64 / 1024.0;
    eprintln!("idle {} KiB, peak {} KiB: {grew_mib:.1} MiB above idle", idle, peak);
    assert!(grew_mib < 8.0, "memory stayed flat: {grew_mib:.1} MiB above idle");
}
