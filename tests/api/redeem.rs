//! `/api/photo/redeem-replace-token` and `/api/photo/replace`: token-gated
//! streaming uploads, exact slot accounting, and the three ways of telling
//! the site how it went.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::common::*;
use crate::multipart::MultipartBody;
use crate::site::Site;

fn location(response: &reqwest::Response) -> url::Url {
    assert_eq!(response.status(), 303, "expected a redirect");
    url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
}

fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn a_redeem_stores_a_new_version_and_redirects_with_the_success_parameters() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done?theme=green")]).await;
    let content = b"the replacement bytes".repeat(1000);
    let response = f.redeem(&token, &content, &[("color", "blue")]).await;
    let target = location(&response);
    assert_eq!(target.host_str(), Some("www.example.com"));
    assert_eq!(target.path(), "/done");
    let photo = f.photo().await;
    let expected = [
        ("theme", "green"),
        ("domain", "videos.example.com"),
        ("replace_token", token.as_str()),
        ("photo_id", f.photo_id.as_str()),
        ("tree_id", "1"),
        ("token", photo.token.as_str()),
        ("color", "blue"),
    ];
    let got: Vec<(String, String)> = target.query_pairs().into_owned().collect();
    let expected: Vec<(String, String)> =
        expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(got, expected);
    assert_eq!(photo.versions.len(), 2);
    assert_eq!(photo.current_version().number, 2);
    assert_eq!(photo.current_version().file.size, content.len() as u64);
    assert_eq!(photo.current_version().file.sha256, hex::encode(Sha256::digest(&content)));
    assert_eq!(photo.versions[0].file.size, 11, "the first version is kept");
    assert_eq!(f.uploads_used(&token).await, 1);
}

#[tokio::test]
async fn a_file_sent_before_its_token_is_spooled_and_still_stored() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let form = Form::new()
        .part("file", Part::bytes(content.clone()).file_name("first.bin"))
        .text("replace_token", token.clone());
    let response = f.http.post(f.url(REDEEM)).multipart(form).send().await.unwrap();
    assert!(query_param(&location(&response), "photo_id").is_some());
    assert_eq!(f.photo().await.current_version().file.sha256, hex::encode(Sha256::digest(&content)));
    let spooled = walk_files(&f.data_dir().join("spool"));
    assert!(spooled.is_empty(), "the spool file is gone: {spooled:?}");
}

#[tokio::test]
async fn the_token_may_come_in_the_query_string() {
    let f = PhotoApp::new().await;
    let token = f.token(&[]).await;
    let form = Form::new().part("file", Part::bytes(b"abc".to_vec()).file_name("a.jpg"));
    let url = format!("{}?replace_token={token}", f.url(REDEEM));
    let response = f.http.post(url).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "OK\n", "no return_url: a simple 200 OK");
    assert_eq!(f.photo().await.versions.len(), 2);
}

async fn assert_plain_refusal(response: reqwest::Response, status: u16, text: &str) {
    assert_eq!(response.status(), status);
    assert!(response.headers().get("location").is_none());
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let body = response.text().await.unwrap();
    assert!(body.contains(text), "{body}");
    assert!(!body.contains('<'), "unstyled: {body}");
}

#[tokio::test]
async fn unknown_expired_and_used_up_tokens_get_plain_text_that_stops_resumable_js() {
    let f = PhotoApp::new().await;
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    assert_plain_refusal(f.redeem(unknown, b"x", &[]).await, 404, "unknown or has expired").await;
    assert_plain_refusal(f.redeem("not-a-token", b"x", &[]).await, 404, "unknown or has expired").await;

    let expired = f.expired_token().await;
    assert_plain_refusal(f.redeem(&expired, b"x", &[]).await, 404, "unknown or has expired").await;

    let once = f.token(&[("return_url", "http://www.example.com/done")]).await;
    assert_eq!(f.redeem(&once, b"x", &[]).await.status(), 303);
    assert_plain_refusal(f.redeem(&once, b"y", &[]).await, 404, "no uploads left").await;
    assert_eq!(f.photo().await.versions.len(), 2, "only the one allowed upload landed");
    assert_eq!(f.stored_objects().await.len(), 2);
}

#[tokio::test]
async fn a_missing_or_repeated_token_is_400_and_uses_no_slot() {
    let f = PhotoApp::new().await;
    let form = Form::new().part("file", Part::bytes(b"abc".to_vec()).file_name("a.jpg"));
    let response = f.http.post(f.url(REDEEM)).multipart(form).send().await.unwrap();
    assert_plain_refusal(response, 400, "No replace_token").await;

    let token = f.token(&[]).await;
    let response = f.redeem(&token, b"abc", &[("replace_token", &token)]).await;
    assert_plain_refusal(response, 400, "more than once").await;
    // The same token given again after the file (seen only at the end).
    let form = Form::new()
        .text("replace_token", token.clone())
        .part("file", Part::bytes(b"abc".to_vec()).file_name("a.jpg"))
        .text("replace_token", token.clone());
    let response = f.http.post(f.url(REDEEM)).multipart(form).send().await.unwrap();
    assert_plain_refusal(response, 400, "more than once").await;
    assert_eq!(f.uploads_used(&token).await, 0);
    assert_eq!(f.stored_objects().await.len(), 1, "only the original upload is stored");
    assert_eq!(f.redeem(&token, b"now properly", &[]).await.status(), 200, "the slot is still there");
}

#[tokio::test]
async fn a_request_that_is_not_multipart_is_415() {
    let f = PhotoApp::new().await;
    let response = f.http.post(f.url(REDEEM)).body("replace_token=x").send().await.unwrap();
    assert_plain_refusal(response, 415, "multipart").await;
}

#[tokio::test]
async fn resumable_js_chunk_probes_are_told_to_send() {
    let f = PhotoApp::new().await;
    let probe = f.http.get(f.url(&format!("{REDEEM}?resumableChunkNumber=1"))).send().await;
    assert_eq!(probe.unwrap().status(), 204);
}

#[tokio::test]
async fn a_redeem_without_a_file_reports_the_error_to_the_site_and_gives_the_slot_back() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let form = Form::new().text("replace_token", token.clone()).text("note", "no file here");
    let response = f.http.post(f.url(REDEEM)).multipart(form).send().await.unwrap();
    let target = location(&response);
    assert!(query_param(&target, "error_message").unwrap().contains("No file"));
    assert_eq!(query_param(&target, "note").as_deref(), Some("no file here"));
    assert!(query_param(&target, "photo_id").is_none());
    assert_eq!(f.uploads_used(&token).await, 0);
    assert_eq!(f.redeem(&token, b"abc", &[]).await.status(), 303, "the slot was given back");
}

#[tokio::test]
async fn a_file_over_the_limit_fails_with_the_slot_back_and_the_old_version_untouched() {
    let f = PhotoApp::with(|c| c.limits.max_upload_bytes = 100_000).await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let response = f.redeem(&token, &vec![7u8; 100_001], &[]).await;
    let message = query_param(&location(&response), "error_message").unwrap();
    assert!(message.contains("100000"), "{message}");
    let photo = f.photo().await;
    assert_eq!((photo.versions.len(), photo.current_version().file.size), (1, 11));
    assert_eq!(f.stored_objects().await.len(), 1, "no partial object");
    assert_eq!(f.uploads_used(&token).await, 0);
    assert_eq!(f.redeem(&token, &vec![7u8; 100_000], &[]).await.status(), 303);
}

#[tokio::test]
async fn a_hundred_concurrent_redeems_of_a_three_upload_token_store_exactly_three_versions() {
    // All hundred are received at once: none is turned away as busy.
    let f = PhotoApp::with(|c| c.limits.max_concurrent_uploads = 128).await;
    let token = f.token(&[("max_uploads", "3"), ("return_url", "http://www.example.com/done")]).await;
    let statuses =
        f.redeem_at_once(&token, 100, |i| format!("concurrent upload {i}").repeat(500).into_bytes()).await;
    let successes = statuses.iter().filter(|s| **s == 303).count();
    let refused = statuses.iter().filter(|s| **s == 404).count();
    assert_eq!((successes, refused), (3, 97), "{statuses:?}");
    let photo = f.photo().await;
    assert_eq!(photo.versions.len(), 4, "the original and exactly three replacements");
    assert_eq!(f.stored_objects().await.len(), 4);
    assert_eq!(f.uploads_used(&token).await, 3);
}

#[tokio::test]
async fn a_client_that_resets_mid_body_gets_its_slot_back_within_a_second_and_no_callback() {
    let (f, site) = background_fixture().await;
    let token = background_token(&f, &site, &[]).await;
    let address = f.running.as_ref().unwrap().address;
    let body = MultipartBody::new("B").field("replace_token", &token).file_head("file", "half.bin");
    let head = body.post_head(REDEEM, address, 10_000_000);
    let body = body.raw(&vec![b'h'; 5 * 1024 * 1024]).into_bytes();
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    // SO_LINGER 0: closing sends a TCP reset instead of a FIN.
    socket.set_zero_linger().unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    f.wait_for_metric(SLOTS_RESERVED, 1.0).await;
    f.wait_for_metric("upload_receiver_bytes_received_total", 1.0).await;
    let reset = Instant::now();
    drop(socket);

    // The slot comes back as soon as the receiver notices; then the same
    // one-upload token works.
    loop {
        let answer = f.redeem(&token, b"complete upload", &[]).await.text().await.unwrap();
        if answer.starts_with("ok ") {
            break;
        }
        assert!(reset.elapsed() < Duration::from_secs(1), "the slot was not back within 1 s: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let photo = f.photo().await;
    assert_eq!(photo.versions.len(), 2);
    assert_eq!(photo.current_version().file.size, 15);
    assert_eq!(f.stored_objects().await.len(), 2, "no partial object: {:?}", f.stored_objects().await);
    assert_eq!(site.requests().len(), 1, "only the completed upload called the site back");
}

#[tokio::test]
async fn extra_parameters_cannot_override_the_receivers_and_are_encoded() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let evil = "x\r\nSet-Cookie: a=b\"<script>";
    let extras = [
        ("photo_id", "666"),
        ("token", "forged"),
        ("domain", "evil.example"),
        ("error_message", "no"),
        ("q", evil),
    ];
    let response = f.redeem(&token, b"abc", &extras).await;
    let raw = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(!raw.contains('\r') && !raw.contains('\n') && !raw.contains('"') && !raw.contains('<'), "{raw}");
    let target = location(&response);
    let pairs: Vec<(String, String)> = target.query_pairs().into_owned().collect();
    let photo = f.photo().await;
    assert_eq!(pairs.iter().filter(|(n, _)| n == "photo_id").count(), 1);
    assert_eq!(query_param(&target, "photo_id").unwrap(), f.photo_id);
    assert_eq!(query_param(&target, "token").unwrap(), photo.token.as_str());
    assert_eq!(query_param(&target, "domain").unwrap(), "videos.example.com");
    assert!(query_param(&target, "error_message").is_none());
    assert_eq!(query_param(&target, "q").unwrap(), evil);
}

/// Issues a token with `return_url`, then finds the padding that makes the
/// return URL with all parameters exactly `length` characters long.
async fn padded_redeem(f: &PhotoApp, token: &str, length: usize) -> reqwest::Response {
    // A first redeem with an empty pad measures the rest of the URL; the
    // token secret and ids have fixed lengths, so only the pad varies.
    let probe = f.redeem(token, b"p", &[("pad", "")]).await;
    let base = match probe.status().as_u16() {
        303 => probe.headers()["location"].to_str().unwrap().len(),
        status => panic!("probe answered {status}"),
    };
    f.redeem(token, b"p", &[("pad", &"a".repeat(length - base))]).await
}

#[tokio::test]
async fn urls_under_1500_characters_redirect_and_longer_ones_post_a_form() {
    let f = PhotoApp::new().await;
    let token =
        f.token(&[("return_url", "http://www.example.com/done?theme=green"), ("max_uploads", "6")]).await;
    let response = padded_redeem(&f, &token, 1499).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"].len(), 1499);
    for length in [1500, 1501] {
        let response = padded_redeem(&f, &token, length).await;
        assert_eq!(response.status(), 200, "length {length}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("form-action http://www.example.com"), "{csp}");
        let html = response.text().await.unwrap();
        assert!(
            html.contains(
                "<form id=\"return\" method=\"post\" action=\"http://www.example.com/done?theme=green\">"
            ),
            "{html}"
        );
        for name in ["domain", "replace_token", "photo_id", "tree_id", "token", "pad"] {
            assert!(html.contains(&format!("name=\"{name}\"")), "{name}");
        }
        assert!(html.contains("<button type=\"submit\">"), "a visible button for browsers without scripts");
    }
}

/// A fixture whose callbacks may reach the loopback site.
async fn background_fixture() -> (PhotoApp, Site) {
    let site = Site::start().await;
    let f = PhotoApp::with(|c| c.callback.allowed_hosts = vec!["127.0.0.1".into()]).await;
    (f, site)
}

/// A background-mode token for the photo that calls `site` back at `/cb`,
/// with the other get-replace-token parameters in `params`.
async fn background_token(f: &PhotoApp, site: &Site, params: &[(&str, &str)]) -> String {
    let return_url = site.url("/cb");
    let mut all = vec![("return_url", return_url.as_str()), ("background_return_p", "1")];
    all.extend_from_slice(params);
    f.token(&all).await
}

#[tokio::test]
async fn background_mode_calls_the_site_and_answers_in_plain_text() {
    let (f, site) = background_fixture().await;
    let return_url = site.url("/cb?theme=green");
    let token = f.token(&[("return_url", &return_url), ("background_return_p", "1")]).await;
    let response = f.redeem(&token, b"flash upload", &[("session", "abc")]).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let answer = response.text().await.unwrap();
    let photo = f.photo().await;
    let calls = site.requests();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "GET");
    assert_eq!(call.param("photo_id").unwrap(), f.photo_id);
    assert_eq!(call.param("token").unwrap(), photo.token.as_str());
    assert_eq!(call.param("session").as_deref(), Some("abc"));
    assert_eq!(call.param("theme").as_deref(), Some("green"));
    let callback_url = format!("http://{}{}", site.address, call.target);
    assert_eq!(
        answer,
        format!("ok videos.example.com 1 {} {} {callback_url}\n", f.photo_id, photo.token.as_str())
    );
}

#[tokio::test]
async fn background_callbacks_are_get_under_1500_characters_and_post_from_1500() {
    let (f, site) = background_fixture().await;
    let token = background_token(&f, &site, &[("max_uploads", "6")]).await;
    // Measure the GET URL with an empty pad, as the site received it.
    let answer = f.redeem(&token, b"p", &[("pad", "")]).await.text().await.unwrap();
    assert!(answer.starts_with("ok "), "{answer}");
    let base = format!("http://{}{}", site.address, site.requests()[0].target).len();
    for (length, method) in [(1499, "GET"), (1500, "POST"), (1501, "POST")] {
        let answer =
            f.redeem(&token, b"p", &[("pad", &"a".repeat(length - base))]).await.text().await.unwrap();
        assert!(answer.starts_with("ok "), "{answer}");
        let call = site.requests().pop().unwrap();
        assert_eq!(call.method, method, "length {length}");
        assert_eq!(call.param("pad").unwrap().len(), length - base);
        if method == "GET" {
            assert_eq!(format!("http://{}{}", site.address, call.target).len(), length);
        } else {
            assert_eq!(call.target, "/cb");
            assert_eq!(call.param("photo_id").unwrap(), f.photo_id);
        }
    }
}

#[tokio::test]
async fn background_callbacks_to_loopback_are_refused_without_an_allow_list() {
    let site = Site::start().await;
    let f = PhotoApp::new().await;
    let token = background_token(&f, &site, &[]).await;
    // The upload is told ok; the callback is refused by the rules, not retried.
    let answer = f.redeem(&token, b"abc", &[]).await.text().await.unwrap();
    assert!(answer.starts_with("ok "), "{answer}");
    assert_eq!(f.metric(r#"upload_receiver_callbacks_total{result="forbidden"}"#).await, Some(1.0));
    assert_eq!(
        f.metric(r#"upload_receiver_deliveries_total{channel="callback",result="dead"}"#).await,
        Some(1.0)
    );
    assert!(site.requests().is_empty(), "no connection reached the site");
}

#[tokio::test]
async fn a_signed_replace_stores_a_new_version_wherever_photo_id_comes() {
    let f = PhotoApp::new().await;
    let writer = f.writer.clone();
    let file = || Part::bytes(b"replaced by the server".to_vec()).file_name("r.jpg");
    // photo_id as a field after the file (spooled), then before it.
    let form = Form::new().part("file", file()).text("photo_id", f.photo_id.clone());
    let body = text(f.signed_multipart(&writer, "/api/photo/replace", form)).await;
    assert_eq!(
        xml_attribute(&body, "message").as_deref(),
        Some("The photo was successfully replaced"),
        "{body}"
    );
    assert_eq!(xml_field(&body, "photo_id").unwrap(), f.photo_id);
    let form = Form::new().text("photo_id", f.photo_id.clone()).part("file", file());
    assert_ok(&text(f.signed_multipart(&writer, "/api/photo/replace", form)).await);
    assert_eq!(f.photo().await.versions.len(), 3);
}

#[tokio::test]
async fn a_replace_of_an_unknown_photo_stores_nothing() {
    let f = PhotoApp::new().await;
    let writer = f.writer.clone();
    let form =
        Form::new().text("photo_id", "999").part("file", Part::bytes(vec![1; 1000]).file_name("r.jpg"));
    assert_error(&text(f.signed_multipart(&writer, "/api/photo/replace", form)).await, "no_such_photo");
    let form = Form::new().part("file", Part::bytes(vec![1; 1000]).file_name("r.jpg"));
    assert_error(&text(f.signed_multipart(&writer, "/api/photo/replace", form)).await, "invalid_input");
    assert_eq!(f.stored_objects().await.len(), 1);
    let form = Form::new()
        .text("photo_id", f.photo_id.clone())
        .part("file", Part::bytes(vec![1; 10]).file_name("r.jpg"));
    let unsigned = f.http.post(f.url("/api/photo/replace")).multipart(form);
    assert_error(&text(unsigned).await, "permission_denied");
}

#[tokio::test]
async fn a_part_header_block_without_end_is_refused_at_its_limit() {
    let f = PhotoApp::with(|c| c.limits.max_part_header_bytes = 1024).await;
    let token = f.token(&[]).await;
    let body = MultipartBody::new("B")
        .field("replace_token", &token)
        .raw(b"--B\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Endless: ")
        .raw(&vec![b'e'; 200_000]);
    let response = f.redeem_raw(&body.content_type(), body.into_bytes()).await;
    assert_eq!(response.status(), 400);
    let answer = response.text().await.unwrap();
    assert!(answer.contains("1024"), "{answer}");
    assert_eq!(f.uploads_used(&token).await, 0);
}

#[tokio::test]
async fn a_stalled_body_times_out_and_gives_the_slot_back() {
    let f = PhotoApp::with(|c| c.server.body_idle_timeout_secs = 1).await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let address = f.running.as_ref().unwrap().address;
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let part =
        MultipartBody::new("B").field("replace_token", &token).file_head("file", "s").raw(b"some bytes");
    socket.write_all(part.post_head(REDEEM, address, 1_000_000).as_bytes()).await.unwrap();
    socket.write_all(&part.into_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut socket, &mut answer))
            .await
            .expect("answered after the idle timeout")
            .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(answer.contains("error_message="), "{answer}");
    assert_eq!(f.uploads_used(&token).await, 0);
    assert_eq!(f.stored_objects().await.len(), 1);
}

#[tokio::test]
async fn two_file_parts_or_a_malformed_body_are_400_with_the_slot_back() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let form = Form::new()
        .text("replace_token", token.clone())
        .part("file", Part::bytes(vec![1; 5000]).file_name("a.jpg"))
        .part("file", Part::bytes(vec![2; 5000]).file_name("b.jpg"));
    let response = f.http.post(f.url(REDEEM)).multipart(form).send().await.unwrap();
    assert_plain_refusal(response, 400, "more than one file part").await;
    let truncated = MultipartBody::new("B")
        .field("replace_token", &token)
        .file_head("file", "t")
        .raw(b"no closing boundary");
    let response = f.redeem_raw(&truncated.content_type(), truncated.into_bytes()).await;
    assert_eq!(response.status(), 400);
    assert_eq!(f.uploads_used(&token).await, 0);
    assert_eq!(f.stored_objects().await.len(), 1);
    assert_eq!(f.redeem(&token, b"fine", &[]).await.status(), 303);
}

#[tokio::test]
async fn too_many_or_too_large_fields_are_400_with_the_slot_back() {
    let f = PhotoApp::with(|c| {
        c.limits.max_fields = 5;
        c.limits.max_field_bytes = 100;
    })
    .await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let many: Vec<(String, String)> = (0..6).map(|i| (format!("f{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_plain_refusal(f.redeem(&token, b"abc", &many).await, 400, "more than 5 form fields").await;
    let large = "x".repeat(101);
    assert_plain_refusal(f.redeem(&token, b"abc", &[("note", &large)]).await, 400, "limit of 100 bytes")
        .await;
    assert_eq!(f.uploads_used(&token).await, 0);
    assert_eq!(f.stored_objects().await.len(), 1);
}

/// The value of the metric line that starts with `prefix`, if any.
#[tokio::test]
async fn metrics_count_requests_slots_bytes_and_callbacks() {
    let (f, site) = background_fixture().await;
    let token = background_token(&f, &site, &[("max_uploads", "2")]).await;
    assert!(f.redeem(&token, &[5u8; 70_000], &[]).await.text().await.unwrap().starts_with("ok "));
    assert_eq!(f.redeem("0123456789abcdef0123456789abcdef01234567", b"x", &[]).await.status(), 404);
    let response = f.http.get(f.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let at = |prefix: &str| metric_in(&text, prefix).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    assert_eq!(at(r#"upload_receiver_requests_total{endpoint="get_replace_token",outcome="ok"}"#), 1.0);
    assert_eq!(at(r#"upload_receiver_requests_total{endpoint="redeem",outcome="200"}"#), 1.0);
    assert_eq!(at(r#"upload_receiver_requests_total{endpoint="redeem",outcome="404"}"#), 1.0);
    assert_eq!(at(r#"upload_receiver_slot_operations_total{operation="reserve",result="ok"}"#), 1.0);
    assert_eq!(at(r#"upload_receiver_slot_operations_total{operation="reserve",result="unknown"}"#), 1.0);
    assert_eq!(at(r#"upload_receiver_slot_operations_total{operation="commit",result="ok"}"#), 1.0);
    assert_eq!(at(r#"upload_receiver_callbacks_total{result="ok"}"#), 1.0);
    assert!(at("upload_receiver_bytes_received_total") >= 70_000.0);
    assert_eq!(at("upload_receiver_uploads_in_flight"), 0.0);
    assert!(
        at(r#"upload_receiver_backend_duration_seconds_count{backend="state",operation="reserve_slot"}"#)
            >= 2.0
    );
}

#[tokio::test]
async fn uploads_beyond_the_concurrency_limit_are_told_to_retry_and_use_no_slot() {
    let f = PhotoApp::with(|c| c.limits.max_concurrent_uploads = 1).await;
    let token = f.token(&[("return_url", "http://www.example.com/done"), ("max_uploads", "2")]).await;
    // One upload in progress, its body still arriving.
    let address = f.running.as_ref().unwrap().address;
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let part = MultipartBody::new("B").field("replace_token", &token).file_head("file", "s").raw(b"started");
    let rest = part.closing();
    let head = part.post_head(REDEEM, address, part.len() + rest.len());
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&part.into_bytes()).await.unwrap();
    f.wait_for_metric(SLOTS_RESERVED, 1.0).await;

    let response = f.redeem(&token, b"second", &[]).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let writer = f.writer.clone();
    let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("x.jpg"));
    assert_error(&text(f.signed_multipart(&writer, "/api/photo/upload", form)).await, "service_unavailable");

    socket.write_all(&rest).await.unwrap();
    let mut answer = vec![0u8; 2048];
    let n = tokio::io::AsyncReadExt::read(&mut socket, &mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 303"));
    assert_eq!(f.uploads_used(&token).await, 1, "the refused upload used no slot");
    assert_eq!(f.redeem(&token, b"now there is room", &[]).await.status(), 303);
}

#[tokio::test]
async fn a_token_in_query_and_form_with_the_same_value_is_one_token_and_extras_come_back_once() {
    // Resumable.js sends every parameter in the query and in the form.
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let query = [("replace_token", token.as_str()), ("resumableChunkSize", "1048576"), ("note", "q")];
    let form = Form::new()
        .text("replace_token", token.clone())
        .text("resumableChunkSize", "1048576")
        .text("note", "f")
        .part("file", Part::bytes(b"both ways".to_vec()).file_name("a.jpg"));
    let url = url::Url::parse_with_params(&f.url(REDEEM), query).unwrap();
    let response = f.http.post(url).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let location = location(&response);
    let names: Vec<String> = location.query_pairs().map(|(n, v)| format!("{n}={v}")).collect();
    let count = |wanted: &str| names.iter().filter(|n| n.as_str() == wanted).count();
    assert_eq!(count(&format!("replace_token={token}")), 1, "{names:?}");
    assert_eq!(count("resumableChunkSize=1048576"), 1, "the same value both ways comes back once: {names:?}");
    assert_eq!((count("note=q"), count("note=f")), (1, 1), "different values both come back: {names:?}");
    assert_eq!(f.uploads_used(&token).await, 1);

    let other = f.token(&[]).await;
    let form = Form::new().text("replace_token", token.clone()).part("file", Part::bytes(b"x".to_vec()));
    let url = url::Url::parse_with_params(&f.url(REDEEM), [("replace_token", &other)]).unwrap();
    let response = f.http.post(url).multipart(form).send().await.unwrap();
    assert_plain_refusal(response, 400, "more than once").await;
    assert_eq!(f.uploads_used(&other).await, 0);
}
