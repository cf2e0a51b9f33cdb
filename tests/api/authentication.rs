//! OAuth 1.0a verification and permission levels, seen from outside.

use upload_receiver::domain::Permission;

use crate::common::GET_REPLACE_TOKEN as TOKEN_PATH;
use crate::common::*;

/// A query-signed URL for `/api/echo?note=hi`, to be tampered with.
fn signed_echo_url(app: &TestApp, signing: &Signing) -> String {
    let writer = app.writer.clone();
    let request = app
        .signed_request(&writer, "/api/echo", &[("note", "hi")], Placement::Query, signing)
        .build()
        .unwrap();
    request.url().to_string()
}

#[tokio::test]
async fn an_unsigned_call_is_anonymous_and_denied_write_methods() {
    let app = spawn_app().await;
    let echo = text(app.http.get(app.url("/api/echo?a=b"))).await;
    assert_ok(&echo);
    assert_eq!(xml_attribute(&echo, "permission_level").as_deref(), Some("anonymous"));
    let body = text(app.http.get(app.url(&format!("{TOKEN_PATH}?photo_id=1")))).await;
    let message = assert_error(&body, "permission_denied");
    assert!(message.contains("'write'"), "{message}");
    assert_eq!(xml_attribute(&body, "permission_level").as_deref(), Some("anonymous"));
}

#[tokio::test]
async fn levels_below_write_are_denied_and_levels_above_are_allowed() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let reader = credential("reader", Permission::Read);
    let body = app.call_as(&reader, TOKEN_PATH, &[("photo_id", &photo_id)], Placement::Header).await;
    assert_error(&body, "permission_denied");
    assert_eq!(xml_attribute(&body, "permission_level").as_deref(), Some("read"));
    let root = credential("super", Permission::Super);
    let body = app.call_as(&root, TOKEN_PATH, &[("photo_id", &photo_id)], Placement::Header).await;
    assert_ok(&body);
    assert_eq!(xml_attribute(&body, "permission_level").as_deref(), Some("super"));
}

#[tokio::test]
async fn every_placement_of_the_oauth_parameters_is_accepted() {
    let app = spawn_app().await;
    let writer = app.writer.clone();
    for placement in ALL_PLACEMENTS {
        let body = app.call_as(&writer, "/api/echo", &[("a", "1"), ("b", "x y+z~*")], placement).await;
        assert_ok(&body);
        assert_eq!(xml_attribute(&body, "permission_level").as_deref(), Some("write"), "{placement:?}");
        assert_eq!(xml_field(&body, "b").as_deref(), Some("x y+z~*"), "{placement:?}");
    }
}

#[tokio::test]
async fn a_wrong_secret_or_unknown_key_is_an_invalid_signature() {
    let app = spawn_app().await;
    let mut wrong = app.writer.clone();
    wrong.consumer_secret = upload_receiver::auth::Secret::new("not-the-secret");
    let body = app.call_as(&wrong, "/api/echo", &[], Placement::Header).await;
    assert_error(&body, "invalid_signature");
    let stranger = credential("stranger", Permission::Super);
    let body = app.call_as(&stranger, "/api/echo", &[], Placement::Query).await;
    assert_error(&body, "invalid_signature");
}

#[tokio::test]
async fn a_tampered_parameter_breaks_the_signature() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let writer = app.writer.clone();
    let request = app
        .signed_request(
            &writer,
            TOKEN_PATH,
            &[("photo_id", &photo_id), ("return_url", "http://a.example/")],
            Placement::Query,
            &Signing::default(),
        )
        .build()
        .unwrap();
    let url = request.url().to_string();
    for tampered in [url.replace("photo_id=", "photo_id=9"), url.replace("a.example", "b.example")] {
        assert_ne!(tampered, url);
        assert_error(&text(app.http.get(&tampered)).await, "invalid_signature");
    }
}

#[tokio::test]
async fn timestamps_outside_the_window_are_refused() {
    let app = spawn_app().await;
    let writer = app.writer.clone();
    for offset in [-400i64, 400, -301, 301] {
        let ts = (unix_now() as i64 + offset) as u64;
        let signing = Signing { timestamp: Some(ts), nonce: None };
        let body = text(app.signed_request(&writer, "/api/echo", &[], Placement::Header, &signing)).await;
        let message = assert_error(&body, "invalid_signature");
        assert!(message.contains("timestamp"), "{message}");
    }
    let signing = Signing { timestamp: Some(unix_now() - 200), nonce: None };
    assert_ok(&text(app.signed_request(&writer, "/api/echo", &[], Placement::Header, &signing)).await);
}

#[tokio::test]
async fn a_replayed_request_is_refused_and_a_refused_one_does_not_burn_its_nonce() {
    let app = spawn_app().await;
    let signing = Signing { timestamp: Some(unix_now()), nonce: Some("replay-nonce-1".into()) };
    let url = signed_echo_url(&app, &signing);
    assert_ok(&text(app.http.get(&url)).await);
    let message = assert_error(&text(app.http.get(&url)).await, "invalid_signature");
    assert!(message.contains("nonce"), "{message}");

    // A badly signed request with a fresh nonce must not record it, or an
    // attacker could burn nonces; the correctly signed one still passes.
    let signing = Signing { timestamp: Some(unix_now()), nonce: Some("fresh-nonce-2".into()) };
    let url = signed_echo_url(&app, &signing);
    let forged = url.replace("note=hi", "note=ho");
    assert_error(&text(app.http.get(&forged)).await, "invalid_signature");
    assert_ok(&text(app.http.get(&url)).await);
}

#[tokio::test]
async fn signature_methods_other_than_hmac_sha1_are_refused() {
    let app = spawn_app().await;
    let url = signed_echo_url(&app, &Signing::default());
    for method in ["PLAINTEXT", "RSA-SHA1", "HMAC-SHA256", "hmac-sha1"] {
        let changed =
            url.replace("oauth_signature_method=HMAC-SHA1", &format!("oauth_signature_method={method}"));
        let message = assert_error(&text(app.http.get(&changed)).await, "invalid_signature");
        assert!(message.contains("HMAC-SHA1"), "{message}");
    }
}

#[tokio::test]
async fn duplicate_oauth_parameters_are_refused() {
    let app = spawn_app().await;
    let url = signed_echo_url(&app, &Signing::default());
    let message =
        assert_error(&text(app.http.get(format!("{url}&oauth_nonce=other"))).await, "invalid_signature");
    assert!(message.contains("more than once"), "{message}");
    // The same parameter in the header and in the query.
    let writer = app.writer.clone();
    let request = app
        .signed_request(&writer, "/api/echo", &[], Placement::Header, &Signing::default())
        .build()
        .unwrap();
    let authorization = request.headers()["authorization"].clone();
    let body = text(
        app.http.get(format!("{}?oauth_version=1.0", request.url())).header("authorization", authorization),
    )
    .await;
    assert_error(&body, "invalid_signature");
}

#[tokio::test]
async fn malformed_oauth_parameters_are_refused() {
    let app = spawn_app().await;
    let url = signed_echo_url(&app, &Signing::default());
    let ts = unix_now().to_string();
    for (from, to) in [
        (format!("oauth_timestamp={ts}"), format!("oauth_timestamp={ts}0")),
        (format!("oauth_timestamp={ts}"), "oauth_timestamp=abc".to_owned()),
        ("note=hi".to_owned(), "note=hi&oauth_version=2.0".to_owned()),
    ] {
        let changed = url.replace(&from, &to);
        assert_ne!(changed, url, "{from}");
        assert_error(&text(app.http.get(&changed)).await, "invalid_signature");
    }
    let without_signature: String =
        url.split('&').filter(|p| !p.starts_with("oauth_signature=")).collect::<Vec<_>>().join("&");
    assert_error(&text(app.http.get(&without_signature)).await, "invalid_signature");
    let body =
        text(app.http.get(app.url("/api/echo")).header("authorization", "OAuth oauth_consumer_key=unquoted"))
            .await;
    assert_error(&body, "invalid_signature");
}

#[tokio::test]
async fn forwarded_scheme_and_host_are_believed_only_from_trusted_proxies() {
    let public = "https://videos.example.com";
    let via_proxy = |app: &TestApp| {
        let writer = app.writer.clone();
        app.signed_request_via(
            public,
            &writer,
            "/api/echo",
            &[("x", "1")],
            Placement::Header,
            &Signing::default(),
        )
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "videos.example.com")
    };
    let trusting = spawn_app_with(|c| c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    assert_ok(&text(via_proxy(&trusting)).await);

    let distrusting = spawn_app().await;
    assert_error(&text(via_proxy(&distrusting)).await, "invalid_signature");
    // From an untrusted peer the forwarded headers are ignored: a request
    // signed for the address actually used passes despite forged ones.
    let writer = distrusting.writer.clone();
    let honest =
        distrusting.signed_request(&writer, "/api/echo", &[], Placement::Header, &Signing::default());
    assert_ok(
        &text(honest.header("x-forwarded-host", "attacker.example").header("x-forwarded-proto", "https"))
            .await,
    );
}

#[tokio::test]
async fn an_unsigned_or_badly_signed_upload_stores_nothing() {
    let app = spawn_app().await;
    let form = || {
        reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(vec![7u8; 100_000]).file_name("a.jpg"))
    };
    let body = text(app.http.post(app.url("/api/photo/upload")).multipart(form())).await;
    assert_error(&body, "permission_denied");
    let mut wrong = app.writer.clone();
    wrong.access_token_secret = upload_receiver::auth::Secret::new("nope");
    let body = text(app.signed_multipart(&wrong, "/api/photo/upload", form())).await;
    assert_error(&body, "invalid_signature");
    let stored = app.stored_objects().await;
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
}
