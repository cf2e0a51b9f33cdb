//! A restart of the process keeps tokens, photos and generated credentials.

use crate::common::*;

#[tokio::test]
async fn a_restart_keeps_tokens_photos_and_the_generated_credentials() {
    let app = spawn_app_with(|c| c.credentials.clear()).await;
    let generated = app.writer.clone();
    assert!(app.data_dir().join("credentials.toml").exists());
    let photo_id = app.upload_photo(b"kept across restarts".to_vec()).await;
    let token = app.replace_token(&photo_id, &[("max_uploads", "5")]).await;

    let app = app.restart().await;
    assert_eq!(app.writer, generated, "the same credential set is loaded, not a new one");
    let photo = app.photo(&photo_id).await;
    assert_eq!(photo.current_version().file.size, 20);
    let status = app.token_status(&token).await;
    assert_eq!((status.grant.max_uploads, status.uploads_used), (5, 0));
    // The generated credentials still sign, and ids keep increasing.
    let body = app.call(GET_REPLACE_TOKEN, &[("photo_id", &photo_id)]).await;
    assert_ok(&body);
    let next: u64 = app.upload_photo(b"y".to_vec()).await.parse().unwrap();
    assert!(next > photo_id.parse::<u64>().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn a_nonce_used_before_a_restart_is_still_refused_after_it() {
    let app = spawn_app().await;
    let writer = app.writer.clone();
    let signing = Signing { timestamp: Some(unix_now()), nonce: Some("survives-restart".into()) };
    let echo = |app: &TestApp| app.signed_request(&writer, "/api/echo", &[], Placement::Query, &signing);
    assert_ok(&text(echo(&app)).await);
    let app = app.restart().await;
    // Same credentials, nonce and timestamp (signed anew: the port changed).
    let message = assert_error(&text(echo(&app)).await, "invalid_signature");
    assert!(message.contains("nonce"), "{message}");
    app.stop().await;
}
