//! Hostile uploads: files that are not what they claim to be, and clients
//! that guess replace tokens.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use upload_receiver::Config;
use upload_receiver::config::MediaTypes;
use upload_receiver::domain::ReplaceToken;

use crate::common::*;

const REDEEM: &str = "/api/photo/redeem-replace-token";

/// An app with one photo (a PNG), configured by `adjust`.
async fn app_with_photo(adjust: impl FnOnce(&mut Config)) -> (TestApp, String) {
    let app = spawn_app_with(adjust).await;
    let photo_id = app.upload_photo([PNG_SIGNATURE, b"first version"].concat()).await;
    (app, photo_id)
}

async fn replace_token(app: &TestApp, photo_id: &str, params: &[(&str, &str)]) -> String {
    let mut all = vec![("photo_id", photo_id)];
    all.extend_from_slice(params);
    let body = app.call("/api/photo/get-replace-token", &all).await;
    xml_field(&body, "replace_token").unwrap_or_else(|| panic!("{body}"))
}

/// Redeems `token` with `file` (declared as a JPEG) on behalf of `client`,
/// an address the app believes because it trusts the loopback proxy.
async fn redeem_from(
    app: &TestApp,
    client: &str,
    token: impl Into<String>,
    file: &[u8],
) -> reqwest::Response {
    let part = Part::bytes(file.to_vec()).file_name("photo.jpg").mime_str("image/jpeg").unwrap();
    let form = Form::new().text("replace_token", token.into()).part("file", part);
    app.http.post(app.url(REDEEM)).header("x-forwarded-for", client).multipart(form).send().await.unwrap()
}

fn error_message(response: &reqwest::Response) -> Option<String> {
    let location = url::Url::parse(response.headers().get("location")?.to_str().unwrap()).unwrap();
    location.query_pairs().find(|(n, _)| n == "error_message").map(|(_, v)| v.into_owned())
}

async fn uploads_used(app: &TestApp, token: &str) -> u32 {
    let token: ReplaceToken = token.parse().unwrap();
    app.running.as_ref().unwrap().inspect().token_status(&token).await.unwrap().unwrap().uploads_used
}

fn default_media_types(config: &mut Config) {
    config.limits.allowed_media_types = Config::default().limits.allowed_media_types;
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
}

#[tokio::test]
async fn html_and_svg_are_not_stored_as_photos_and_the_slot_comes_back() {
    let (app, photo_id) = app_with_photo(default_media_types).await;
    assert_eq!(
        app.config.limits.allowed_media_types,
        MediaTypes::parse(&["image/*".into(), "video/*".into()]).unwrap(),
        "the default admits images and videos only"
    );
    let token = replace_token(&app, &photo_id, &[("return_url", "http://www.example.com/done")]).await;
    let objects_before = app.stored_objects().await.len();
    for hostile in [
        &b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"[..],
        b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
    ] {
        let response = redeem_from(&app, "198.51.100.1", &token, hostile).await;
        assert_eq!(response.status(), 303, "an upload outcome for the site");
        let message = error_message(&response).expect("an error outcome");
        assert!(message.contains("not an accepted kind of file"), "{message}");
        assert_eq!(uploads_used(&app, &token).await, 0, "the slot came back");
        assert_eq!(app.stored_objects().await.len(), objects_before, "nothing stored");
    }

    let jpeg = [JPEG_SIGNATURE, b"a real photo, as far as its first bytes go"].concat();
    let response = redeem_from(&app, "198.51.100.1", &token, &jpeg).await;
    assert_eq!(error_message(&response), None, "the one slot is still there for a JPEG");
    let photo =
        app.running.as_ref().unwrap().inspect().photo(photo_id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(photo.current_version().file.content_type, "image/jpeg");
    assert_eq!(photo.versions[0].file.content_type, "image/png", "the first upload was sniffed too");
}

#[tokio::test]
async fn a_signed_upload_of_html_is_invalid_input() {
    let app = spawn_app_with(default_media_types).await;
    let part = Part::bytes(b"<html><script>alert(1)</script></html>".to_vec())
        .file_name("photo.jpg")
        .mime_str("image/jpeg")
        .unwrap();
    let form = Form::new().part("file", part);
    let body = text(app.signed_multipart(&app.writer.clone(), "/api/photo/upload", form)).await;
    let message = assert_error(&body, "invalid_input");
    assert!(message.contains("not an accepted kind of file"), "{message}");
    assert!(app.stored_objects().await.is_empty());
}

/// Ten thousand guesses per client address, from ten addresses: 10^5 in all.
const GUESSERS: usize = 10;
const GUESSES_EACH: usize = 10_000;
const FAILURES_PER_MINUTE: u32 = 50;

#[tokio::test]
async fn a_hundred_thousand_guessed_tokens_are_refused_and_rate_limited_per_address() {
    let (app, photo_id) = app_with_photo(|config| {
        default_media_types(config);
        config.limits.redeem_rate_limit_per_minute = FAILURES_PER_MINUTE;
    })
    .await;
    let real = replace_token(&app, &photo_id, &[]).await;
    let started_minute = unix_now() / 60;
    let guessers = (0..GUESSERS).map(|g| {
        let (app, real) = (TestApp::handle_of(&app), real.clone());
        tokio::spawn(async move {
            let client = format!("203.0.113.{}", g + 1);
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            for _ in 0..GUESSES_EACH {
                let guess = ReplaceToken::generate().to_string();
                let response = redeem_from(&app, &client, guess, JPEG_SIGNATURE).await;
                *statuses.entry(response.status().as_u16()).or_default() += 1;
                if response.status() == 429 {
                    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                    assert!((1..=60).contains(&wait), "Retry-After {wait}");
                }
            }
            // Over its limit, the guesser cannot use even a real token.
            let refused = redeem_from(&app, &client, real, JPEG_SIGNATURE).await.status();
            (statuses, refused)
        })
    });
    let results = futures_util::future::join_all(guessers).await;
    let minutes = unix_now() / 60 - started_minute + 1;
    for result in results {
        let (statuses, real_token_status) = result.unwrap();
        let refused_404 = statuses.get(&404).copied().unwrap_or(0);
        let limited_429 = statuses.get(&429).copied().unwrap_or(0);
        assert_eq!(refused_404 + limited_429, GUESSES_EACH, "every guess refused: {statuses:?}");
        assert!(
            refused_404 as u64 <= FAILURES_PER_MINUTE as u64 * minutes && refused_404 >= 1,
            "at most the limit per minute reached the token store: {statuses:?}"
        );
        if unix_now() / 60 == started_minute {
            assert_eq!(real_token_status, 429, "still limited within the minute");
        }
    }
    assert_eq!(uploads_used(&app, &real).await, 0, "no guess and no limited request used the real token");
    let fresh_client = redeem_from(&app, "198.51.100.7", &real, JPEG_SIGNATURE).await;
    assert_eq!(fresh_client.status(), 200, "another address is not limited");
    assert_eq!(uploads_used(&app, &real).await, 1);
}

/// How long a refused redeem of `token` takes, seen by the client.
async fn refusal_time(app: &TestApp, token: String) -> Duration {
    let started = Instant::now();
    let status = redeem_from(app, "198.51.100.1", token, JPEG_SIGNATURE).await.status();
    let elapsed = started.elapsed();
    assert_eq!(status, 404);
    elapsed
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test]
async fn unknown_and_expired_tokens_take_the_same_time_to_refuse() {
    const SAMPLES: usize = 2000;
    let (app, photo_id) = app_with_photo(|config| {
        default_media_types(config);
        config.limits.redeem_rate_limit_per_minute = 0;
    })
    .await;
    // An expired token, as the store keeps it.
    let expired = ReplaceToken::generate();
    let now = unix_now();
    let grant = upload_receiver::store::TokenGrant {
        token: expired.clone(),
        photo_id: photo_id.parse().unwrap(),
        max_uploads: 5,
        issued_at: now - 3600,
        valid_until: now - 1,
        return_url: Some("http://www.example.com/done".into()),
        background_return: false,
        issued_to: "test".into(),
    };
    assert!(app.running.as_ref().unwrap().inspect().issue_token(grant).await.unwrap());
    let expired = expired.to_string();
    // Alternating, so that drift on this shared machine hits both alike.
    let (mut unknown, mut expired_times) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let guess = ReplaceToken::generate().to_string();
        unknown.push(refusal_time(&app, guess).await);
        expired_times.push(refusal_time(&app, expired.clone()).await);
    }
    let (unknown, expired) = (median(unknown), median(expired_times));
    let difference = unknown.abs_diff(expired);
    eprintln!("median refusal: unknown {unknown:?}, expired {expired:?}, difference {difference:?}");
    assert!(
        difference < Duration::from_micros(100),
        "unknown {unknown:?} vs expired {expired:?}: a difference a guesser could measure"
    );
}

/// An app with one photo and a one-upload token for it (no return URL:
/// outcomes are answered in plain text), on a test configuration.
async fn one_upload_token(adjust: impl FnOnce(&mut Config)) -> (TestApp, String, String) {
    let (app, photo_id) = app_with_photo(adjust).await;
    let token = replace_token(&app, &photo_id, &[("max_uploads", "1")]).await;
    (app, photo_id, token)
}

/// Posts `body` raw to the redeem endpoint with `content_type`.
async fn raw_redeem(app: &TestApp, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    app.http.post(app.url(REDEEM)).header("content-type", content_type).body(body).send().await.unwrap()
}

fn token_part(boundary: &str, token: &str) -> Vec<u8> {
    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"replace_token\"\r\n\r\n{token}\r\n")
        .into_bytes()
}

#[tokio::test]
async fn malformed_multipart_bodies_are_400_use_no_slot_and_store_nothing() {
    let (app, _, token) = one_upload_token(|_| {}).await;
    let objects_before = app.stored_objects().await;
    let long = "b".repeat(200);
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "truncated closing boundary",
            "multipart/form-data; boundary=B".into(),
            [
                token_part("B", &token),
                b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc\r\n--B"
                    .to_vec(),
            ]
            .concat(),
        ),
        (
            "empty field name",
            "multipart/form-data; boundary=B".into(),
            [
                token_part("B", &token),
                b"--B\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nv\r\n--B--\r\n".to_vec(),
            ]
            .concat(),
        ),
        ("missing boundary", "multipart/form-data".into(), token_part("B", &token)),
        (
            "200-character boundary",
            format!("multipart/form-data; boundary={long}"),
            [token_part(&long, &token), format!("--{long}--\r\n").into_bytes()].concat(),
        ),
        (
            "non-UTF-8 field name",
            "multipart/form-data; boundary=B".into(),
            [
                token_part("B", &token),
                b"--B\r\nContent-Disposition: form-data; name=\"\xff\xfe\"\r\n\r\nv\r\n--B--\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "no part headers end",
            "multipart/form-data; boundary=B".into(),
            [token_part("B", &token), b"--B\r\nContent-Disposition: form-data; name=\"file\"".to_vec()]
                .concat(),
        ),
    ];
    for (case, content_type, body) in cases {
        let response = raw_redeem(&app, &content_type, body).await;
        assert_eq!(response.status(), 400, "{case}: {}", response.text().await.unwrap());
        assert_eq!(uploads_used(&app, &token).await, 0, "{case}: no slot used");
    }
    assert_eq!(app.stored_objects().await, objects_before);
}

#[tokio::test]
async fn a_file_name_with_a_path_is_stored_in_the_receivers_own_key_space() {
    let (app, photo_id, token) = one_upload_token(|_| {}).await;
    let body = [
        token_part("B", &token),
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"../../../../tmp/evil.sh\"\r\n\r\n#!/bin/sh\r\n--B--\r\n".to_vec(),
    ]
    .concat();
    let response = raw_redeem(&app, "multipart/form-data; boundary=B", body).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let photo =
        app.running.as_ref().unwrap().inspect().photo(photo_id.parse().unwrap()).await.unwrap().unwrap();
    let version = &photo.current_version().file;
    assert!(
        version.object_key.starts_with("media/") && !version.object_key.contains(".."),
        "{}",
        version.object_key
    );
    assert_eq!(version.original_filename.as_deref(), Some("evil.sh"), "kept for display, without its path");
    let outside: Vec<_> = walk_files(&app.data_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "evil.sh"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

#[tokio::test]
async fn a_hundred_thousand_fields_or_megabytes_of_text_are_refused_at_the_caps() {
    let (app, _, token) = one_upload_token(|_| {}).await;
    let limits = app.config.limits.clone();
    let mut many = token_part("B", &token);
    for i in 0..100_000 {
        many.extend(format!("--B\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n").as_bytes());
    }
    many.extend(b"--B--\r\n");
    let response = raw_redeem(&app, "multipart/form-data; boundary=B", many).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains(&format!("more than {} form fields", limits.max_fields)), "{text}");

    let mut huge = token_part("B", &token);
    huge.extend(b"--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n");
    huge.extend(vec![b'n'; 8 * 1024 * 1024]);
    huge.extend(b"\r\n--B--\r\n");
    let response = raw_redeem(&app, "multipart/form-data; boundary=B", huge).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains(&format!("limit of {} bytes", limits.max_field_bytes)), "{text}");
    assert_eq!(uploads_used(&app, &token).await, 0);
}

/// Sends a chunked redeem of a `file_bytes`-byte file (a JPEG by its first
/// bytes), of which only the first `sent` bytes go out (all when `None`);
/// returns the answer, which must come within 5 s while the client holds
/// back whatever it did not send.
async fn chunked_redeem(app: &TestApp, token: &str, file_bytes: usize, sent: Option<usize>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.running.as_ref().unwrap().address;
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {REDEEM} HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut body = token_part("B", token);
    body.extend(b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n");
    let file_starts = body.len();
    body.extend(JPEG_SIGNATURE);
    body.resize(file_starts + file_bytes, b'j');
    body.extend(b"\r\n--B--\r\n");
    let end = sent.map_or(body.len(), |sent| file_starts + sent);
    socket.write_all(head.as_bytes()).await.unwrap();
    for chunk in body[..end].chunks(64 * 1024) {
        socket.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        socket.write_all(chunk).await.unwrap();
        socket.write_all(b"\r\n").await.unwrap();
    }
    if sent.is_none() {
        socket.write_all(b"0\r\n\r\n").await.unwrap();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 4096];
        // Up to the end of the answer's body (the server closes).
        while let Ok(n) = socket.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
    });
    read.await.expect("answered while the client still holds the rest");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_chunked_file_one_byte_over_the_limit_is_refused_before_the_rest_is_read() {
    const LIMIT: usize = 1024 * 1024;
    let (app, _, token) = one_upload_token(|config| config.limits.max_upload_bytes = LIMIT as u64).await;
    let refused = |answer: &str| {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains(&format!("limit of {LIMIT} bytes")), "{answer}");
    };
    // A 10 MiB file of which the client sends the limit plus 64 KiB, then
    // waits: the refusal comes without the other 9 MiB.
    refused(&chunked_redeem(&app, &token, 10 * LIMIT, Some(LIMIT + 64 * 1024)).await);
    assert_eq!(uploads_used(&app, &token).await, 0, "the slot is back");
    // The whole body, with a file of the limit plus one byte.
    refused(&chunked_redeem(&app, &token, LIMIT + 1, None).await);
    assert_eq!(uploads_used(&app, &token).await, 0, "the slot is back");
    // A file of exactly the limit is accepted, in the slot still there.
    let accepted = chunked_redeem(&app, &token, LIMIT, None).await;
    assert!(accepted.starts_with("HTTP/1.1 200"), "{accepted}");
    assert_eq!(uploads_used(&app, &token).await, 1);
}
