//! Backend faults: Redis gone before a redeem, the S3 server killed in the
//! middle of an upload.

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
