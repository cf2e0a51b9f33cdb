//! Hostile uploads: files that are not what they claim to be, and clients
//! that guess replace tokens.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use upload_receiver::Config;
use upload_receiver::config::MediaTypes;
use upload_receiver::domain::ReplaceToken;

use crate::common::*;
use crate::multipart::{MultipartBody, post_head};

/// An app with one photo (a PNG), configured by `adjust`.
async fn app_with_png(adjust: impl FnOnce(&mut Config)) -> PhotoApp {
    let app = spawn_app_with(adjust).await;
    PhotoApp::with_first_version(app, [PNG_SIGNATURE, b"first version"].concat()).await
}

/// Redeems `token` with `file` (declared as a JPEG) on behalf of `client`,
/// an address the app believes because it trusts the loopback proxy.
async fn redeem_from(app: &TestApp, client: &str, token: &str, file: &[u8]) -> reqwest::Response {
    let request = app.redeem_request(token, file, &[]).header("x-forwarded-for", client);
    request.send().await.unwrap()
}

fn default_media_types(config: &mut Config) {
    config.limits.allowed_media_types = Config::default().limits.allowed_media_types;
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
}

#[tokio::test]
async fn html_and_svg_are_not_stored_as_photos_and_the_slot_comes_back() {
    let f = app_with_png(default_media_types).await;
    assert_eq!(
        f.config.limits.allowed_media_types,
        MediaTypes::parse(&["image/*".into(), "video/*".into()]).unwrap(),
        "the default admits images and videos only"
    );
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let objects_before = f.stored_objects().await.len();
    for hostile in [
        &b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"[..],
        b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
    ] {
        let response = redeem_from(&f, "198.51.100.1", &token, hostile).await;
        assert_eq!(response.status(), 303, "an upload outcome for the site");
        let message = redirect_error(&response).expect("an error outcome");
        assert!(message.contains("not an accepted kind of file"), "{message}");
        assert_eq!(f.uploads_used(&token).await, 0, "the slot came back");
        assert_eq!(f.stored_objects().await.len(), objects_before, "nothing stored");
    }

    let jpeg = [JPEG_SIGNATURE, b"a real photo, as far as its first bytes go"].concat();
    let response = redeem_from(&f, "198.51.100.1", &token, &jpeg).await;
    assert_eq!(redirect_error(&response), None, "the one slot is still there for a JPEG");
    let photo = f.photo().await;
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

/// Guesses per client address, from ten addresses; the limit, and the
/// delay of a failure past it (long beside a redeem's time under this
/// load, so that "slowed" and "not slowed" cannot be confused).
const GUESSERS: usize = 10;
const GUESSES_EACH: usize = 60;
const FAILURES_PER_MINUTE: u32 = 50;
const PAST_LIMIT_DELAY: Duration = Duration::from_millis(1000);

#[tokio::test]
async fn guesses_past_the_limit_are_answered_slowly_and_a_valid_token_is_never_refused() {
    let f = app_with_png(|config| {
        default_media_types(config);
        config.limits.redeem_rate_limit_per_minute = FAILURES_PER_MINUTE;
        config.limits.redeem_rate_limit_delay_ms = PAST_LIMIT_DELAY.as_millis() as u64;
    })
    .await;
    let real = f.token(&[("max_uploads", "20")]).await;
    let started_minute = unix_now() / 60;
    let guessers = (0..GUESSERS).map(|g| {
        let (app, real) = (TestApp::handle_of(&f), real.clone());
        tokio::spawn(async move {
            let client = format!("203.0.113.{}", g + 1);
            let (mut fast, mut slow) = (0, 0);
            for _ in 0..GUESSES_EACH {
                let guess = ReplaceToken::generate().to_string();
                let started = Instant::now();
                let response = redeem_from(&app, &client, &guess, JPEG_SIGNATURE).await;
                // Always the permanent refusal, never a status to retry.
                assert_eq!(response.status(), 404);
                if started.elapsed() >= PAST_LIMIT_DELAY { slow += 1 } else { fast += 1 }
            }
            // Past its limit, the address still uses a real token, at once.
            let started = Instant::now();
            let real_status = redeem_from(&app, &client, &real, JPEG_SIGNATURE).await.status();
            (fast, slow, real_status, started.elapsed())
        })
    });
    let results = futures_util::future::join_all(guessers).await;
    let minutes = (unix_now() / 60 - started_minute + 1) as usize;
    for result in results {
        let (fast, slow, real_status, real_took) = result.unwrap();
        assert!(fast <= FAILURES_PER_MINUTE as usize * minutes, "{fast} fast, {slow} slow");
        if minutes == 1 {
            assert_eq!(
                slow,
                GUESSES_EACH - FAILURES_PER_MINUTE as usize,
                "every guess past the limit waited"
            );
        }
        assert_eq!(real_status, 200, "a valid token is never refused");
        assert!(real_took < PAST_LIMIT_DELAY, "and never slowed: {real_took:?}");
    }
    assert_eq!(f.uploads_used(&real).await, GUESSERS as u32);
}

#[tokio::test]
async fn used_up_tokens_are_not_guesses_and_one_address_for_a_whole_site_is_never_locked_out() {
    // Every visitor arrives through one load balancer address (the default limit).
    let f = app_with_png(|config| {
        default_media_types(config);
        config.limits.redeem_rate_limit_per_minute = Config::default().limits.redeem_rate_limit_per_minute;
        config.limits.max_concurrent_uploads = 128;
    })
    .await;
    let token = f.token(&[("max_uploads", "3")]).await;
    let attempts = (0..100).map(|_| {
        let (app, token) = (TestApp::handle_of(&f), token.clone());
        tokio::spawn(async move {
            redeem_from(&app, "198.51.100.9", &token, JPEG_SIGNATURE).await.status().as_u16()
        })
    });
    let statuses: Vec<u16> =
        futures_util::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 97, "{statuses:?}");
    // The next visitor from that address, with a fresh token, goes through at once.
    let next = f.token(&[]).await;
    let started = Instant::now();
    assert_eq!(redeem_from(&f, "198.51.100.9", &next, JPEG_SIGNATURE).await.status(), 200);
    // And a mistyped token from it is refused at once: the 97 were not counted.
    assert_eq!(redeem_from(&f, "198.51.100.9", &"0".repeat(40), JPEG_SIGNATURE).await.status(), 404);
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
}

/// How long a refused redeem of `token` takes, seen by the client.
async fn refusal_time(app: &TestApp, token: &str) -> Duration {
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
    let f = app_with_png(|config| {
        default_media_types(config);
        config.limits.redeem_rate_limit_per_minute = 0;
    })
    .await;
    // An expired token, as the store keeps it.
    let expired = f.expired_token().await;
    // Alternating, so that drift on this shared machine hits both alike.
    let (mut unknown, mut expired_times) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let guess = ReplaceToken::generate().to_string();
        unknown.push(refusal_time(&f, &guess).await);
        expired_times.push(refusal_time(&f, &expired).await);
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
async fn one_upload_token(adjust: impl FnOnce(&mut Config)) -> (PhotoApp, String) {
    let f = app_with_png(adjust).await;
    let token = f.token(&[("max_uploads", "1")]).await;
    (f, token)
}

/// A body with boundary `boundary` that begins with the `replace_token` field.
fn with_token(boundary: &str, token: &str) -> MultipartBody {
    MultipartBody::new(boundary).field("replace_token", token)
}

#[tokio::test]
async fn malformed_multipart_bodies_are_400_use_no_slot_and_store_nothing() {
    let (f, token) = one_upload_token(|_| {}).await;
    let objects_before = f.stored_objects().await;
    let long = "b".repeat(200);
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "truncated closing boundary",
            "multipart/form-data; boundary=B".into(),
            with_token("B", &token).file("file", "a", b"abc").raw(b"--B").into_bytes(),
        ),
        (
            "empty field name",
            "multipart/form-data; boundary=B".into(),
            with_token("B", &token)
                .raw(b"--B\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nv\r\n--B--\r\n")
                .into_bytes(),
        ),
        ("missing boundary", "multipart/form-data".into(), with_token("B", &token).into_bytes()),
        (
            "200-character boundary",
            format!("multipart/form-data; boundary={long}"),
            with_token(&long, &token).end(),
        ),
        (
            "non-UTF-8 field name",
            "multipart/form-data; boundary=B".into(),
            with_token("B", &token)
                .raw(b"--B\r\nContent-Disposition: form-data; name=\"\xff\xfe\"\r\n\r\nv\r\n--B--\r\n")
                .into_bytes(),
        ),
        (
            "no part headers end",
            "multipart/form-data; boundary=B".into(),
            with_token("B", &token).raw(b"--B\r\nContent-Disposition: form-data; name=\"file\"").into_bytes(),
        ),
    ];
    for (case, content_type, body) in cases {
        let response = f.redeem_raw(&content_type, body).await;
        assert_eq!(response.status(), 400, "{case}: {}", response.text().await.unwrap());
        assert_eq!(f.uploads_used(&token).await, 0, "{case}: no slot used");
    }
    assert_eq!(f.stored_objects().await, objects_before);
}

#[tokio::test]
async fn a_file_name_with_a_path_is_stored_in_the_receivers_own_key_space() {
    let (f, token) = one_upload_token(|_| {}).await;
    let body = with_token("B", &token).file("file", "../../../../tmp/evil.sh", b"#!/bin/sh");
    let response = f.redeem_raw(&body.content_type(), body.end()).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let photo = f.photo().await;
    let version = &photo.current_version().file;
    assert!(
        version.object_key.starts_with("media/") && !version.object_key.contains(".."),
        "{}",
        version.object_key
    );
    assert_eq!(version.original_filename.as_deref(), Some("evil.sh"), "kept for display, without its path");
    let outside: Vec<_> = walk_files(&f.data_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "evil.sh"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

#[tokio::test]
async fn a_hundred_thousand_fields_or_megabytes_of_text_are_refused_at_the_caps() {
    let (f, token) = one_upload_token(|_| {}).await;
    let limits = f.config.limits.clone();
    let mut many = with_token("B", &token);
    for i in 0..100_000 {
        many = many.field(&format!("f{i}"), "v");
    }
    let response = f.redeem_raw(&many.content_type(), many.end()).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains(&format!("more than {} form fields", limits.max_fields)), "{text}");

    let huge = with_token("B", &token).field("note", &"n".repeat(8 * 1024 * 1024));
    let response = f.redeem_raw(&huge.content_type(), huge.end()).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains(&format!("limit of {} bytes", limits.max_field_bytes)), "{text}");
    assert_eq!(f.uploads_used(&token).await, 0);
}

/// Sends a chunked redeem of a `file_bytes`-byte file (a JPEG by its first
/// bytes), of which only the first `sent` bytes go out (all when `None`);
/// returns the answer, which must come within 5 s while the client holds
/// back whatever it did not send.
async fn chunked_redeem(app: &TestApp, token: &str, file_bytes: usize, sent: Option<usize>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.running.as_ref().unwrap().address;
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = with_token("B", token).file_head("file", "a.jpg");
    let content_type = body.content_type();
    let headers =
        [("Content-Type", content_type.as_str()), ("Transfer-Encoding", "chunked"), ("Connection", "close")];
    let head = post_head(REDEEM, address, &headers);
    let file_starts = body.len();
    let mut file = JPEG_SIGNATURE.to_vec();
    file.resize(file_bytes, b'j');
    let body = body.raw(&file).end();
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
    let (f, token) = one_upload_token(|config| config.limits.max_upload_bytes = LIMIT as u64).await;
    let refused = |answer: &str| {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains(&format!("limit of {LIMIT} bytes")), "{answer}");
    };
    // A 10 MiB file of which the client sends the limit plus 64 KiB, then
    // waits: the refusal comes without the other 9 MiB.
    refused(&chunked_redeem(&f, &token, 10 * LIMIT, Some(LIMIT + 64 * 1024)).await);
    assert_eq!(f.uploads_used(&token).await, 0, "the slot is back");
    // The whole body, with a file of the limit plus one byte.
    refused(&chunked_redeem(&f, &token, LIMIT + 1, None).await);
    assert_eq!(f.uploads_used(&token).await, 0, "the slot is back");
    // A file of exactly the limit is accepted, in the slot still there.
    let accepted = chunked_redeem(&f, &token, LIMIT, None).await;
    assert!(accepted.starts_with("HTTP/1.1 200"), "{accepted}");
    assert_eq!(f.uploads_used(&token).await, 1);
}
