//! Backend faults: Redis gone, paused or restarted around a redeem, the S3
//! server killed in the middle of an upload.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use upload_receiver::config::Config;

use crate::common::*;
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
    let app = spawn_app_from(config).await;
    let photo_id = app.upload_photo(b"original".to_vec()).await;
    let body = app.call("/api/photo/get-replace-token", &[("photo_id", &photo_id)]).await;
    let token = xml_field(&body, "replace_token").unwrap();

    redis.kill();
    let started = Instant::now();
    let form = Form::new()
        .text("replace_token", token)
        .part("file", Part::bytes(vec![3u8; 200_000]).file_name("a.jpg"));
    let response =
        app.http.post(app.url("/api/photo/redeem-replace-token")).multipart(form).send().await.unwrap();
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
    let app = spawn_app_from(config).await;
    let photo_id = app.upload_photo(b"original".to_vec()).await;
    let body = app
        .call(
            "/api/photo/get-replace-token",
            &[("photo_id", &photo_id), ("return_url", "http://www.example.com/done")],
        )
        .await;
    let token = xml_field(&body, "replace_token").unwrap();

    // 20 MiB declared; 6 MiB sent (one 5 MiB part goes to S3); then S3 dies.
    let address = app.running.as_ref().unwrap().address;
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut head =
        format!("--B\r\nContent-Disposition: form-data; name=\"replace_token\"\r\n\r\n{token}\r\n")
            .into_bytes();
    head.extend(b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n\r\n");
    let total = head.len() + 20 * 1024 * 1024 + "\r\n--B--\r\n".len();
    let request = format!(
        "POST /api/photo/redeem-replace-token HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: {total}\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.write_all(&head).await.unwrap();
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
    let form = Form::new()
        .text("replace_token", token)
        .part("file", Part::bytes(b"retry".to_vec()).file_name("r.jpg"));
    let response =
        app.http.post(app.url("/api/photo/redeem-replace-token")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("photo_id="), "{location}");
}

/// An app on Redis state at `redis` (1 s timeouts) and S3, with one photo;
/// returns it with a token of `max_uploads` for the photo.
async fn app_on_redis(redis: &processes::Owned, max_uploads: u32) -> (TestApp, String, String) {
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.state.redis_url = Some(format!("redis://127.0.0.1:{}/", redis.port));
    config.state.redis_timeout_secs = 1;
    let app = spawn_app_from(config).await;
    let photo_id = app.upload_photo(b"original".to_vec()).await;
    let max = max_uploads.to_string();
    let body =
        app.call("/api/photo/get-replace-token", &[("photo_id", &photo_id), ("max_uploads", &max)]).await;
    let token = xml_field(&body, "replace_token").unwrap_or_else(|| panic!("{body}"));
    (app, photo_id, token)
}

async fn redeem(app: &TestApp, token: &str, file: &[u8]) -> reqwest::Response {
    let form = Form::new()
        .text("replace_token", token.to_owned())
        .part("file", Part::bytes(file.to_vec()).file_name("a.jpg"));
    app.http.post(app.url("/api/photo/redeem-replace-token")).multipart(form).send().await.unwrap()
}

/// Committed uploads of `token` and versions of `photo_id`, read from the store.
async fn counts(app: &TestApp, token: &str, photo_id: &str) -> (u32, usize) {
    let state = &app.running.as_ref().unwrap().state.state;
    let used = state.token(&token.parse().unwrap()).await.unwrap().unwrap().1;
    let versions = state.photo(photo_id.parse().unwrap()).await.unwrap().unwrap().versions.len();
    (used, versions)
}

#[tokio::test]
async fn a_paused_redis_fails_the_reserve_with_503_and_nothing_is_applied_twice() {
    let redis = processes::redis();
    let (app, photo_id, token) = app_on_redis(&redis, 3).await;

    redis.signal("STOP");
    let started = Instant::now();
    let response = redeem(&app, &token, b"during the pause").await;
    let waited = started.elapsed();
    redis.signal("CONT");
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());
    assert!(waited < Duration::from_secs(3), "refused after the 1 s timeout, not hung: {waited:?}");

    // The reserve sent during the pause runs when Redis resumes: at most
    // that one slot is held (by a lease nobody will commit), never more.
    assert_eq!(counts(&app, &token, &photo_id).await, (0, 1), "nothing was committed");
    let mut accepted = 0;
    for attempt in 0..3 {
        match redeem(&app, &token, format!("after {attempt}").as_bytes()).await.status().as_u16() {
            200 => accepted += 1,
            404 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!((2..=3).contains(&accepted), "off by at most the one in-flight reserve: {accepted} of 3");
    assert_eq!(counts(&app, &token, &photo_id).await, (accepted, 1 + accepted as usize), "each counted once");
}

#[tokio::test]
async fn a_restarted_redis_serves_the_next_redeem_and_counts_once() {
    let redis = processes::redis_in(tempfile::tempdir().unwrap(), processes::free_port(), true);
    let (app, photo_id, token) = app_on_redis(&redis, 2).await;
    assert_eq!(redeem(&app, &token, b"before").await.status(), 200);

    // A restart empties the script cache and drops every connection.
    let _redis = redis.restart_redis();
    let mut status = 0;
    for _ in 0..20 {
        // The first call after the restart may still meet the dead connection.
        status = redeem(&app, &token, b"after the restart").await.status().as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(counts(&app, &token, &photo_id).await, (2, 3), "both uploads counted once");
    assert_eq!(redeem(&app, &token, b"one too many").await.status(), 404);
}
