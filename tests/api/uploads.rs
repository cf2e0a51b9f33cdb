//! `/api/photo/upload`: signed multipart uploads streamed to the object store.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::multipart::{MultipartBody, post_head};

const PATH: &str = "/api/photo/upload";

fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn stored_bytes(app: &TestApp, key: &str) -> Vec<u8> {
    app.object_bytes(key).await.expect("the object exists")
}

#[tokio::test]
async fn an_upload_creates_a_photo_whose_version_matches_the_bytes() {
    let app = spawn_app().await;
    let mut content = JPEG_SIGNATURE.to_vec();
    content.extend(pseudo_random_bytes(3 * 1024 * 1024 + 17, 7));
    // The declared type is not believed: the stored type comes from the bytes.
    let part = Part::bytes(content.clone()).file_name("../../holiday.jpg").mime_str("text/html").unwrap();
    let form = Form::new().text("title", "<b>Holiday</b> in Rome").part("file", part);
    let writer = app.writer.clone();
    let body = text(app.signed_multipart(&writer, PATH, form)).await;
    assert_ok(&body);
    assert_eq!(xml_attribute(&body, "message").as_deref(), Some("The file was successfully uploaded"));
    let photo_id = xml_field(&body, "photo_id").unwrap();
    assert_eq!(xml_field(&body, "tree_id").as_deref(), Some("1"));
    let token = xml_field(&body, "token").unwrap();
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()));

    let photo = app.photo(&photo_id).await;
    assert_eq!(photo.token.as_str(), token);
    assert_eq!(photo.metadata.title.as_deref(), Some("Holiday in Rome"));
    let version = photo.current_version();
    assert_eq!(version.number, 1);
    assert_eq!(version.file.size, content.len() as u64);
    assert_eq!(version.file.sha256, hex::encode(Sha256::digest(&content)));
    assert_eq!(version.file.content_type, "image/jpeg");
    assert_eq!(version.file.original_filename.as_deref(), Some("holiday.jpg"));
    assert!(version.file.object_key.starts_with("media/"), "{}", version.file.object_key);
    assert_eq!(stored_bytes(&app, &version.file.object_key).await, content);
}

#[tokio::test]
async fn photo_ids_increase_and_tokens_differ() {
    let app = spawn_app().await;
    let first: u64 = app.upload_photo(b"a".to_vec()).await.parse().unwrap();
    let second: u64 = app.upload_photo(b"b".to_vec()).await.parse().unwrap();
    assert!(second > first);
}

#[tokio::test]
async fn a_zero_byte_file_is_stored() {
    let app = spawn_app().await;
    let id = app.upload_photo(Vec::new()).await;
    let photo = app.photo(&id).await;
    assert_eq!(photo.current_version().file.size, 0);
    assert_eq!(photo.current_version().file.sha256, hex::encode(Sha256::digest(b"")));
}

#[tokio::test]
async fn the_answer_format_may_come_from_a_multipart_field() {
    // 23's PHP sample sends format=xml among the multipart fields.
    let app = spawn_app().await;
    let form =
        Form::new().text("format", "json").part("file", Part::bytes(b"abc".to_vec()).file_name("a.jpg"));
    let writer = app.writer.clone();
    let body = text(app.signed_multipart(&writer, PATH, form)).await;
    assert!(body.starts_with("var visual = {\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"upload\":{\"photo_id\":"), "{body}");
}

#[tokio::test]
async fn a_request_without_a_file_is_no_file() {
    let app = spawn_app().await;
    let writer = app.writer.clone();
    let body = text(app.signed_multipart(&writer, PATH, Form::new().text("title", "no file"))).await;
    assert_error(&body, "no_file");
    let body = app.call(PATH, &[("title", "form, not multipart")]).await;
    assert_error(&body, "no_file");
}

#[tokio::test]
async fn two_file_parts_are_refused_and_leave_nothing_behind() {
    let app = spawn_app().await;
    let form = Form::new()
        .part("file", Part::bytes(vec![1u8; 10_000]).file_name("a.jpg"))
        .part("file", Part::bytes(vec![2u8; 10_000]).file_name("b.jpg"));
    let writer = app.writer.clone();
    let body = text(app.signed_multipart(&writer, PATH, form)).await;
    let message = assert_error(&body, "invalid_input");
    assert!(message.contains("more than one file"), "{message}");
    assert!(app.stored_objects().await.is_empty());
}

#[tokio::test]
async fn a_file_over_the_limit_is_refused_and_nothing_is_kept() {
    let app = spawn_app_with(|c| c.limits.max_upload_bytes = 1024 * 1024).await;
    let form = Form::new().part("file", Part::bytes(vec![0u8; 1024 * 1024 + 1]).file_name("big.jpg"));
    let writer = app.writer.clone();
    let body = text(app.signed_multipart(&writer, PATH, form)).await;
    let message = assert_error(&body, "invalid_input");
    assert!(message.contains("1048576"), "{message}");
    assert!(app.stored_objects().await.is_empty());
    // Exactly at the limit is accepted.
    app.upload_photo(vec![0u8; 1024 * 1024]).await;
}

/// Sends a request head and part of a body over a raw socket, then stops
/// sending and measures how soon the answer arrives.
async fn answer_to_partial_body(app: &TestApp, head: String, body_part: &[u8]) -> (String, Duration) {
    let mut socket = tokio::net::TcpStream::connect(app.running.as_ref().unwrap().address).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    // The server may stop reading (and close) before all of this is sent.
    let _ = socket.write_all(body_part).await;
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.ends_with(b"/>\n") || answer.ends_with(b"</response>\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body was still incomplete");
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[tokio::test]
async fn an_oversized_upload_is_refused_without_reading_the_rest_of_the_body() {
    let app = spawn_app_with(|c| c.limits.max_upload_bytes = 256 * 1024).await;
    let writer = app.writer.clone();
    let request = app.signed_multipart(&writer, PATH, Form::new()).build().unwrap();
    let authorization = request.headers()["authorization"].to_str().unwrap().to_owned();
    let declared = 1u64 << 30; // claims 1 GiB, sends 1 MiB, then waits
    let body = MultipartBody::new("XyZ").file_head("file", "a.bin");
    let headers = [
        ("Authorization", authorization),
        ("Content-Type", body.content_type()),
        ("Content-Length", declared.to_string()),
    ];
    let head = post_head(PATH, request.url().authority(), &headers);
    let body = body.raw(&vec![b'a'; 1024 * 1024]).into_bytes();
    let (answer, waited) = answer_to_partial_body(&app, head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("code=\"invalid_input\""), "{answer}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(app.stored_objects().await.is_empty());
}

#[tokio::test]
async fn an_oversized_form_body_is_refused_from_its_declared_length() {
    let app = spawn_app_with(|c| c.limits.max_form_bytes = 1000).await;
    let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "5000000")];
    let head = post_head("/api/echo", app.running.as_ref().unwrap().address, &headers);
    let (answer, _) = answer_to_partial_body(&app, head, b"a=1&").await;
    assert!(answer.contains("code=\"invalid_input\""), "{answer}");
    assert!(answer.contains("1000 bytes"), "{answer}");
    // A form under the limit but streamed past it (no Content-Length) too.
    let big = "x".repeat(2000);
    let response = text(
        app.http.post(app.url("/api/echo")).header("content-type", "application/x-www-form-urlencoded").body(
            reqwest::Body::wrap_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(format!(
                "a={big}"
            ))])),
        ),
    )
    .await;
    assert_error(&response, "invalid_input");
}

#[tokio::test]
async fn a_malformed_multipart_body_is_invalid_input_and_stores_nothing() {
    let app = spawn_app().await;
    let writer = app.writer.clone();
    for (content_type, body) in [
        (
            "multipart/form-data; boundary=XyZ",
            MultipartBody::new("XyZ").file_head("file", "a").raw(b"abc").into_bytes(),
        ),
        (
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nabc\r\n--XyZ--\r\n".to_vec(),
        ),
        ("multipart/form-data", b"--XyZ\r\n\r\n".to_vec()),
    ] {
        let request = app.signed_multipart(&writer, PATH, Form::new()).build().unwrap();
        let authorization = request.headers()["authorization"].to_str().unwrap().to_owned();
        let text = text(
            app.http
                .post(app.url(PATH))
                .header("authorization", authorization)
                .header("content-type", content_type)
                .body(body),
        )
        .await;
        assert_error(&text, "invalid_input");
    }
    assert!(app.stored_objects().await.is_empty());
}
