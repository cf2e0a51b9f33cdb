//! `/api/photo/get-replace-token`: every parameter rule of the contract.

use crate::common::GET_REPLACE_TOKEN as PATH;
use crate::common::*;

#[tokio::test]
async fn a_signed_request_gets_a_fresh_40_hex_token_with_the_defaults() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    let before = unix_now();
    let body = app.call(PATH, &[("photo_id", &photo_id)]).await;
    assert_ok(&body);
    assert_eq!(xml_attribute(&body, "permission_level").as_deref(), Some("write"));
    assert_eq!(xml_attribute(&body, "message").as_deref(), Some("The replace token is ready to use"));
    let token = xml_field(&body, "replace_token").unwrap();
    assert_eq!(token.len(), 40);
    assert!(token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{token}");
    assert_eq!(xml_field(&body, "photo_id").unwrap(), photo_id);
    assert_eq!(xml_field(&body, "max_uploads").unwrap(), "1");
    assert_eq!(xml_field(&body, "valid_minutes").unwrap(), "180");
    assert_eq!(xml_field(&body, "return_url").unwrap(), "");
    let valid_until: u64 = xml_field(&body, "valid_until").unwrap().parse().unwrap();
    assert!((before + 180 * 60..=unix_now() + 180 * 60).contains(&valid_until), "{valid_until}");

    let again = app.call(PATH, &[("photo_id", &photo_id)]).await;
    assert_ne!(xml_field(&again, "replace_token").unwrap(), token, "every token is new");
}

#[tokio::test]
async fn the_issued_token_is_stored_with_its_terms() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    let body = app
        .call(
            PATH,
            &[
                ("photo_id", &photo_id),
                ("max_uploads", "7"),
                ("valid_minutes", "60"),
                ("background_return_p", "1"),
                ("return_url", "https://site.example.org/cb?x=1"),
            ],
        )
        .await;
    let status = app.token_status(&xml_field(&body, "replace_token").unwrap()).await;
    let grant = status.grant;
    assert_eq!(status.uploads_used, 0);
    assert_eq!(grant.max_uploads, 7);
    assert_eq!(grant.photo_id().unwrap().to_string(), photo_id);
    assert!(grant.background_return);
    assert_eq!(grant.return_url.as_deref(), Some("https://site.example.org/cb?x=1"));
    assert_eq!(grant.valid_until, xml_field(&body, "valid_until").unwrap().parse::<u64>().unwrap());
}

#[tokio::test]
async fn valid_minutes_and_max_uploads_are_clamped_into_their_ranges() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    for (given, expected) in [
        ("1", "15"),
        ("15", "15"),
        ("-3", "15"),
        ("0", "15"),
        ("16", "16"),
        ("1440", "1440"),
        ("1441", "1440"),
        ("99999999999999999999", "1440"),
    ] {
        let body = app.call(PATH, &[("photo_id", &photo_id), ("valid_minutes", given)]).await;
        assert_eq!(
            xml_field(&body, "valid_minutes").as_deref(),
            Some(expected),
            "valid_minutes={given}: {body}"
        );
    }
    for (given, expected) in
        [("0", "1"), ("-1", "1"), ("1", "1"), ("100", "100"), ("101", "100"), ("5000", "100")]
    {
        let body = app.call(PATH, &[("photo_id", &photo_id), ("max_uploads", given)]).await;
        assert_eq!(xml_field(&body, "max_uploads").as_deref(), Some(expected), "max_uploads={given}: {body}");
    }
    let body = app.call(PATH, &[("photo_id", &photo_id), ("valid_minutes", "30")]).await;
    let valid_until: u64 = xml_field(&body, "valid_until").unwrap().parse().unwrap();
    assert!(valid_until.abs_diff(unix_now() + 30 * 60) <= 2, "valid_until follows the clamped minutes");
}

#[tokio::test]
async fn numbers_that_are_not_integers_are_invalid_input() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    for name in ["valid_minutes", "max_uploads"] {
        for bad in ["1.5", "ten", "1e3", " 5", "5 ", "0x10", "-"] {
            let body = app.call(PATH, &[("photo_id", &photo_id), (name, bad)]).await;
            let message = assert_error(&body, "invalid_input");
            assert!(message.contains(name), "{message}");
        }
    }
}

#[tokio::test]
async fn photo_id_is_required_and_must_name_an_existing_photo() {
    let PhotoApp { app, .. } = PhotoApp::new().await;
    assert_error(&app.call(PATH, &[]).await, "no_such_photo");
    for unknown in ["", "999", "abc", "0", "-1", "1.0"] {
        assert_error(&app.call(PATH, &[("photo_id", unknown)]).await, "no_such_photo");
    }
}

#[tokio::test]
async fn return_url_must_be_an_absolute_http_url_and_is_returned_as_given() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    for good in [
        "http://www.example.com/upload/callback?theme=green",
        "https://example.org",
        "http://127.0.0.1:9/x#frag",
    ] {
        let body = app.call(PATH, &[("photo_id", &photo_id), ("return_url", good)]).await;
        assert_eq!(xml_field(&body, "return_url").as_deref(), Some(good), "{body}");
    }
    for bad in [
        "/relative/path",
        "www.example.com/x",
        "ftp://example.com/x",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "http://exa mple.com/",
        "http://example.com/\r\nSet-Cookie: x=1",
        "http:///nohost",
        "http:\\\\evil.example\\x",
        "HTTP://",
        &format!("http://example.com/{}", "a".repeat(3000)),
    ] {
        let body = app.call(PATH, &[("photo_id", &photo_id), ("return_url", bad)]).await;
        let message = assert_error(&body, "invalid_input");
        assert!(message.contains("return_url"), "{bad}: {message}");
    }
}

#[tokio::test]
async fn return_url_is_limited_to_the_configured_hosts_when_a_list_is_set() {
    let app = spawn_app_with(|c| c.callback.allowed_hosts = vec!["site.example.org".into()]).await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let ok = app.call(PATH, &[("photo_id", &photo_id), ("return_url", "https://SITE.example.org/cb")]).await;
    assert_ok(&ok);
    let refused =
        app.call(PATH, &[("photo_id", &photo_id), ("return_url", "https://evil.example.net/cb")]).await;
    assert_error(&refused, "invalid_input");
}

#[tokio::test]
async fn background_return_p_is_zero_or_one() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    for good in ["0", "1", ""] {
        assert_ok(&app.call(PATH, &[("photo_id", &photo_id), ("background_return_p", good)]).await);
    }
    for bad in ["2", "yes", "true", "01"] {
        assert_error(
            &app.call(PATH, &[("photo_id", &photo_id), ("background_return_p", bad)]).await,
            "invalid_input",
        );
    }
}

#[tokio::test]
async fn a_parameter_given_twice_is_invalid_input() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    let body = app.call(PATH, &[("photo_id", &photo_id), ("max_uploads", "2"), ("max_uploads", "3")]).await;
    assert_error(&body, "invalid_input");
}

#[tokio::test]
async fn the_rules_hold_wherever_the_oauth_parameters_travel() {
    let PhotoApp { app, photo_id } = PhotoApp::new().await;
    let writer = app.writer.clone();
    for placement in ALL_PLACEMENTS {
        let body =
            app.call_as(&writer, PATH, &[("photo_id", &photo_id), ("max_uploads", "500")], placement).await;
        assert_eq!(xml_field(&body, "max_uploads").as_deref(), Some("100"), "{placement:?}: {body}");
        let body =
            app.call_as(&writer, PATH, &[("photo_id", &photo_id), ("valid_minutes", "x")], placement).await;
        assert_error(&body, "invalid_input");
    }
}
