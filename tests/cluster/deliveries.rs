//! Deliveries shared by the instances: a background callback whose
//! instance dies in the middle of its first attempt is made by another
//! once its lease runs out.

use std::time::{Duration, Instant};

use upload_receiver::config::Config;

use crate::common::*;
use crate::faults::second_instance;
use crate::site::Site;

#[tokio::test]
async fn a_callback_whose_instance_dies_mid_attempt_is_made_by_another() {
    let site = Site::start().await;
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.callback.allowed_hosts = vec!["127.0.0.1".into()];
    config.callback.timeout_secs = 2;
    config.callback.retry_initial_delay_secs = 1;
    let survivor = PhotoApp::on(spawn_app_from(config.clone()).await).await;
    let (mut doomed, doomed_address) = second_instance(
        &config,
        &[
            ("UPLOAD_RECEIVER__CALLBACK__ALLOWED_HOSTS", "[\"127.0.0.1\"]"),
            ("UPLOAD_RECEIVER__CALLBACK__TIMEOUT_SECS", "2"),
        ],
    );
    // The site holds the first callback without answering.
    let token =
        survivor.token(&[("return_url", &site.url("/silent-once")), ("background_return_p", "1")]).await;
    let http = reqwest::Client::new();
    let form = reqwest::multipart::Form::new()
        .text("replace_token", token.clone())
        .part("file", reqwest::multipart::Part::bytes(JPEG_SIGNATURE.to_vec()).file_name("a.jpg"));
    let redeem = tokio::spawn(
        http.post(format!("http://{doomed_address}/api/photo/redeem-replace-token")).multipart(form).send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while site.requests().is_empty() {
        assert!(Instant::now() < deadline, "the doomed instance began its callback");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    assert!(redeem.await.unwrap().is_err(), "the doomed instance never answered");
    assert_eq!(survivor.uploads_used(&token).await, 1, "the upload was committed before the callback");

    // Its lease (timeout + 5 s) runs out; the survivor makes the callback.
    let deadline = Instant::now() + Duration::from_secs(20);
    while site.requests().len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", site.requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = site.requests();
    assert_eq!(calls[1].target, calls[0].target, "the same request");
    assert_eq!(calls[1].param("photo_id").as_deref(), Some(survivor.photo_id.as_str()));
    survivor
        .wait_for_metric(r#"upload_receiver_deliveries_total{channel="callback",result="delivered"}"#, 1.0)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(site.requests().len(), 2, "delivered once by the survivor");
}
