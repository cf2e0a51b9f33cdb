//! Signatures made by Python's oauthlib (through requests), the reference
//! client of TESTING.md, in every placement, including the departures from
//! RFC 5849 that 23's own sample clients make.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::*;

/// The Python with requests-oauthlib: `UPLOAD_RECEIVER_TEST_PYTHON`, else
/// the venv `scripts/test.sh` creates. Missing is a failure, not a skip.
fn python() -> PathBuf {
    let path = std::env::var_os("UPLOAD_RECEIVER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/python3"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it creates .ci/venv with requests-oauthlib) or set UPLOAD_RECEIVER_TEST_PYTHON",
        path.display()
    );
    path
}

/// Runs the oauthlib client on `spec` (credentials added) and returns the body.
fn oauthlib_request(app: &TestApp, spec: Value) -> String {
    run_client(Command::new(python()).arg(support("oauth_client.py")), app, spec)
}

fn support(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(file)
}

/// Runs a client script with `spec` (plus the `write` credentials) on its
/// stdin; it prints `{"status": ..., "body": ...}`. Returns the body.
fn run_client(command: &mut Command, app: &TestApp, mut spec: Value) -> String {
    let writer = &app.writer;
    spec["consumer_key"] = json!(writer.consumer_key);
    spec["consumer_secret"] = json!(writer.consumer_secret.expose());
    spec["token"] = json!(writer.access_token);
    spec["token_secret"] = json!(writer.access_token_secret.expose());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "oauth_client.py failed: {}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["status"], 200);
    answer["body"].as_str().unwrap().to_owned()
}

/// Ruby with Debian's `oauth` gem, which `scripts/test.sh` installs.
fn ruby() -> Command {
    let ok =
        Command::new("ruby").args(["-roauth", "-e", "exit 0"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok,
        "ruby with the oauth gem is missing: run scripts/test.sh (it installs Debian's ruby and ruby-oauth)"
    );
    Command::new("ruby")
}

async fn blocking_request(app: &TestApp, spec: Value) -> String {
    let handle = TestApp::handle_of(app);
    tokio::task::spawn_blocking(move || oauthlib_request(&handle, spec)).await.unwrap()
}

#[tokio::test]
async fn oauthlib_signatures_in_header_query_and_body_are_accepted() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let url = app.url(GET_REPLACE_TOKEN);
    for (method, placement) in [("GET", "header"), ("GET", "query"), ("POST", "body"), ("POST", "header")] {
        let spec = json!({
            "method": method, "url": url, "placement": placement,
            "params": [["photo_id", photo_id], ["return_url", "https://site.example.org/cb?a=1&b=two%20words"], ["format", "json"]],
        });
        let body = blocking_request(&app, spec).await;
        assert!(body.starts_with("var visual = {\"status\":\"ok\""), "{method} {placement}: {body}");
        assert!(
            body.contains("\"return_url\":\"https://site.example.org/cb?a=1\\u0026b=two%20words\""),
            "{body}"
        );
    }
}

#[tokio::test]
async fn oauthlib_signed_upload_tokens_are_issued_in_every_placement_and_list_reads_back() {
    let app = spawn_app().await;
    let url = app.url(GET_UPLOAD_TOKEN);
    for (method, placement) in [("GET", "header"), ("GET", "query"), ("POST", "body"), ("POST", "header")] {
        let spec = json!({
            "method": method, "url": url, "placement": placement,
            "params": [["title", "Signed by oauthlib & co"], ["tags", "a b"], ["campaign", "x y"], ["format", "json"]],
        });
        let body = blocking_request(&app, spec).await;
        assert!(body.starts_with("var visual = {\"status\":\"ok\""), "{method} {placement}: {body}");
        assert!(body.contains("\"title\":\"Signed by oauthlib \\u0026 co\""), "{body}");
        let token = body.split("\"upload_token\":\"").nth(1).unwrap()[..40].to_owned();
        assert_eq!(app.redeem_upload(&token, b"bytes", &[]).await.status(), 200);
    }
    let spec = json!({
        "method": "GET", "url": app.url("/api/photo/list"), "placement": "header",
        "params": [["photo_id", "1,2,3,4"]],
    });
    let body = blocking_request(&app, spec).await;
    assert_eq!(body.matches("<title>Signed by oauthlib &amp; co</title>").count(), 4, "{body}");
}

#[tokio::test]
async fn a_literal_plus_signed_as_2b_in_a_post_query_is_tolerated() {
    // PEAR's HTTP_OAuth (23's PHP sample) decodes the query without turning
    // `+` into a space, so `?b=x+y` is signed as b=x%2By.
    let app = spawn_app().await;
    let spec = json!({
        "method": "POST", "url": app.url("/api/echo"), "placement": "header",
        "sign_query": "b=x%2By", "send_query": "b=x+y",
    });
    let body = blocking_request(&app, spec).await;
    assert_ok(&body);
    assert_eq!(xml_attribute(&body, "permission_level").as_deref(), Some("write"), "{body}");
}

#[tokio::test]
async fn oauth_parameters_split_between_header_and_form_body_are_accepted() {
    // The Ruby oauth gem sends oauth_verifier in the body, the rest in the header.
    let app = spawn_app().await;
    let spec = json!({
        "method": "POST", "url": app.url("/api/echo"), "placement": "header",
        "params": [["note", "hello"]], "body_extra": [["oauth_verifier", "z3pjUoZU6KN8B5n4V2Fy"]],
    });
    let body = blocking_request(&app, spec).await;
    assert_ok(&body);
    assert_eq!(xml_field(&body, "note").as_deref(), Some("hello"));
    assert_eq!(xml_attribute(&body, "permission_level").as_deref(), Some("write"));
}

#[tokio::test]
async fn the_testing_md_request_shape_verifies_end_to_end() {
    // POST with a query and a form body, both signed (RFC 5849 §3.4.1.3.1).
    let app = spawn_app().await;
    let spec = json!({
        "method": "POST", "url": app.url("/api/echo"), "placement": "header",
        "sign_query": "a=1&b=x%20y", "params": [["resumableChunkNumber", "1"]],
    });
    let body = blocking_request(&app, spec).await;
    assert_ok(&body);
    assert_eq!(xml_field(&body, "b").as_deref(), Some("x y"));
    assert_eq!(xml_field(&body, "resumableChunkNumber").as_deref(), Some("1"));
}

#[tokio::test]
async fn an_upload_as_23s_ruby_sample_sends_it_is_accepted() {
    // Signed by the Ruby oauth gem (with oauth_body_hash), with the sample's
    // hand-built multipart body that lacks the CRLF before delimiters.
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.mp4");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let spec =
        json!({"site": app.base_url, "path": "/api/photo/upload", "title": "My title ~*", "file": file});
    let handle = TestApp::handle_of(&app);
    let body = tokio::task::spawn_blocking(move || {
        run_client(ruby().arg(support("ruby_oauth_upload.rb")), &handle, spec)
    })
    .await
    .unwrap();
    assert_ok(&body);
    let photo = app.photo(&xml_field(&body, "photo_id").unwrap()).await;
    assert_eq!(photo.metadata.title.as_deref(), Some("My title ~*"));
    assert_eq!(photo.current_version().file.size, content.len() as u64);
    use sha2::Digest;
    assert_eq!(photo.current_version().file.sha256, hex::encode(sha2::Sha256::digest(&content)));
}
