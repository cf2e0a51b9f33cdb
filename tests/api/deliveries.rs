//! Background callbacks kept until the site answers: the client is told
//! the outcome at once, a failed callback is retried with growing delays
//! (by whichever instance, after a restart too), a refusal that will not
//! pass is not retried.

use std::time::{Duration, Instant};

use upload_receiver::auth::credentials::Secret;
use upload_receiver::config::MediaTypes;
use upload_receiver::delivery::signature::{HEADER, Signer};
use upload_receiver::domain::unix_now;

use crate::common::*;
use crate::site::{Recorded, Site};

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// A receiver whose callbacks may reach loopback sites and are retried
/// after about a second.
async fn retrying_app() -> PhotoApp {
    PhotoApp::with(|c| {
        c.callback.allowed_hosts = vec!["127.0.0.1".into()];
        c.callback.timeout_secs = 2;
        c.callback.retry_initial_delay_secs = 1;
    })
    .await
}

/// Waits (at most `secs`) until `site` has received `count` requests.
async fn requests_reach(site: &Site, count: usize, secs: u64) -> Vec<Recorded> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let requests = site.requests();
        if requests.len() >= count {
            return requests;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} requests after {secs} s: {requests:?}",
            requests.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failed_callback_is_retried_until_the_site_answers_and_the_client_is_told_at_once() {
    let f = retrying_app().await;
    let site = Site::start().await;
    let token = f.token(&[("return_url", &site.url("/fail-twice")), ("background_return_p", "1")]).await;
    let started = Instant::now();
    let answer = f.redeem(&token, b"retried", &[("session", "abc")]).await.text().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "answered after the first attempt");
    assert!(answer.starts_with("ok videos.example.com "), "the upload is committed: {answer}");

    // 503, 503, then 200: the same request each time, about 1 s then 2 s apart.
    let calls = requests_reach(&site, 3, 15).await;
    assert!(calls.iter().all(|c| c.target == calls[0].target), "{calls:?}");
    assert_eq!(calls[0].param("photo_id").as_deref(), Some(f.photo_id.as_str()));
    assert_eq!(calls[0].param("session").as_deref(), Some("abc"));
    f.wait_for_metric(r#"upload_receiver_deliveries_total{channel="callback",result="delivered"}"#, 1.0)
        .await;
    assert_eq!(
        f.metric(r#"upload_receiver_deliveries_total{channel="callback",result="retry"}"#).await,
        Some(2.0)
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(site.requests().len(), 3, "delivered once: never made again");
    assert_eq!(f.metric("upload_receiver_deliveries_pending").await, Some(0.0));
}

#[tokio::test]
async fn a_pending_callback_is_made_after_a_restart() {
    // The site is down when the upload is committed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let f = retrying_app().await;
    let return_url = format!("http://127.0.0.1:{port}/cb");
    let token = f.token(&[("return_url", &return_url), ("background_return_p", "1")]).await;
    let answer = f.redeem(&token, b"kept", &[]).await.text().await.unwrap();
    assert!(answer.starts_with("ok "), "{answer}");
    f.wait_for_metric(r#"upload_receiver_deliveries_total{channel="callback",result="retry"}"#, 1.0).await;

    // Stopped, the site comes up, the receiver starts again: it delivers.
    let PhotoApp { app, photo_id } = f;
    let app = app.restart().await;
    let site = Site::start_on(port).await;
    let calls = requests_reach(&site, 1, 15).await;
    assert_eq!(calls[0].param("photo_id"), Some(photo_id));
    app.stop().await;
}

#[tokio::test]
async fn a_callback_the_rules_refuse_is_not_retried_but_the_upload_is_told_ok() {
    let site = Site::start().await;
    // No allow-list: loopback callbacks are refused.
    let f = PhotoApp::with(|c| c.callback.retry_initial_delay_secs = 1).await;
    let token = f.token(&[("return_url", &site.url("/cb")), ("background_return_p", "1")]).await;
    let answer = f.redeem(&token, b"abc", &[]).await.text().await.unwrap();
    assert!(answer.starts_with("ok "), "{answer}");
    assert_eq!(
        f.metric(r#"upload_receiver_deliveries_total{channel="callback",result="dead"}"#).await,
        Some(1.0)
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(site.requests().is_empty(), "no connection reached the site");
    assert_eq!(
        f.metric(r#"upload_receiver_deliveries_total{channel="callback",result="retry"}"#).await,
        None
    );
}

/// A receiver that posts every outcome to `site`'s `path`, accepting
/// images only.
async fn webhook_app(site: &Site, path: &str) -> PhotoApp {
    let app = spawn_app_with(|c| {
        c.callback.allowed_hosts = vec!["127.0.0.1".into()];
        c.callback.retry_initial_delay_secs = 1;
        c.webhook.url = Some(site.url(path));
        c.webhook.secret = Some(Secret::new(WEBHOOK_SECRET));
        c.limits.allowed_media_types = MediaTypes::parse(&["image/*".to_owned()]).unwrap();
    })
    .await;
    PhotoApp::with_first_version(app, [JPEG_SIGNATURE, b"the first version"].concat()).await
}

/// The JSON of a webhook request, once its signature is checked.
fn signed_event(site: &Site, call: &Recorded) -> serde_json::Value {
    assert_eq!((call.method.as_str(), call.header("content-type")), ("POST", Some("application/json")));
    let url = format!("http://{}{}", site.address, call.target);
    let header = call.header(HEADER).expect("signed");
    let verifier = Signer::new(&[WEBHOOK_SECRET.to_owned()]);
    assert_eq!(verifier.verify(header, ("POST", &url, call.body.as_bytes()), unix_now(), 300), Ok(()));
    serde_json::from_str(&call.body).unwrap()
}

#[tokio::test]
async fn every_outcome_in_every_mode_is_posted_to_the_webhook_as_signed_json() {
    let site = Site::start().await;
    let f = webhook_app(&site, "/hook").await;
    // Browser mode, a success; no return_url, a failure (not an image).
    let token = f.token(&[("return_url", &site.url("/done"))]).await;
    let picture = [JPEG_SIGNATURE, b"a new picture"].concat();
    assert_eq!(f.redeem(&token, &picture, &[]).await.status(), 303);
    let plain = f.token(&[]).await;
    assert_eq!(f.redeem(&plain, b"not a picture", &[]).await.status(), 400);
    // Background mode: the callback and the webhook both.
    let background = f.token(&[("return_url", &site.url("/cb")), ("background_return_p", "1")]).await;
    let answer = f.redeem(&background, &[JPEG_SIGNATURE, b"third"].concat(), &[]).await.text().await.unwrap();
    assert!(answer.starts_with("ok "), "{answer}");

    let calls = requests_reach(&site, 4, 10).await;
    let hooks = calls.iter().filter(|c| c.target == "/hook");
    let mut events: Vec<serde_json::Value> = hooks.map(|c| signed_event(&site, c)).collect();
    assert_eq!(events.len(), 3, "{calls:?}");
    let in_background = events.iter().position(|e| e["token"] == background.as_str()).expect("its event");
    let in_background = events.remove(in_background);
    assert_eq!(in_background["type"], "upload.succeeded");
    assert_eq!(in_background["version"]["number"], 3, "{in_background}");
    events.sort_by_key(|e| e["type"].as_str().unwrap().to_owned());
    let (failed, succeeded) = (&events[0], &events[1]);
    let photo = f.photo().await;
    let version = &photo.versions[1];
    assert_eq!(succeeded["type"], "upload.succeeded");
    assert_eq!(succeeded["token_kind"], "replace");
    assert_eq!(succeeded["token"], token.as_str());
    assert_eq!(succeeded["photo_id"], f.photo_id.as_str());
    assert_eq!(succeeded["tree_id"], "1");
    assert_eq!(succeeded["version"]["number"], version.number);
    assert_eq!(succeeded["version"]["object_key"], version.file.object_key.as_str());
    assert_eq!(succeeded["version"]["size"], picture.len());
    assert_eq!(succeeded["version"]["content_type"], "image/jpeg");
    assert_eq!(succeeded["version"]["checksum"], version.file.checksum().as_str());
    assert!(succeeded.get("error_message").is_none(), "{succeeded}");
    assert!(succeeded["occurred_at"].as_u64().unwrap().abs_diff(unix_now()) < 10);
    assert_eq!(failed["type"], "upload.failed");
    assert_eq!(failed["token"], plain.as_str());
    assert!(failed["error_message"].as_str().unwrap().contains("not an accepted kind of file"), "{failed}");
    assert!(failed.get("version").is_none(), "{failed}");
    assert_ne!(failed["event_id"], succeeded["event_id"]);
    assert!(succeeded["event_id"].as_str().unwrap().starts_with("evt_"));
}

#[tokio::test]
async fn a_webhook_that_fails_is_retried_with_the_same_event() {
    let site = Site::start().await;
    let f = webhook_app(&site, "/fail-twice").await;
    let token = f.token(&[]).await;
    assert_eq!(f.redeem(&token, &[JPEG_SIGNATURE, b"again"].concat(), &[]).await.status(), 200);
    let calls = requests_reach(&site, 3, 15).await;
    let events: Vec<serde_json::Value> = calls.iter().map(|c| signed_event(&site, c)).collect();
    assert!(events.iter().all(|e| e["event_id"] == events[0]["event_id"]), "one event, sent three times");
    f.wait_for_metric(r#"upload_receiver_deliveries_total{channel="webhook",result="delivered"}"#, 1.0).await;
}

#[tokio::test]
async fn a_chunked_file_abandoned_is_an_upload_abandoned_event() {
    let site = Site::start().await;
    let f = PhotoApp::with(|c| {
        c.callback.allowed_hosts = vec!["127.0.0.1".into()];
        c.webhook.url = Some(site.url("/hook"));
        c.webhook.secret = Some(Secret::new(WEBHOOK_SECRET));
        // Longer than storing one small chunk takes, even on a slow S3.
        c.limits.chunked_idle_timeout_secs = 3;
    })
    .await;
    let token = f.token(&[]).await;
    const CHUNK: usize = 256 * 1024;
    let bytes = crate::chunk_client::content(3 * CHUNK);
    let first = crate::chunk_client::send_chunk(&f, &token, &bytes, 1, CHUNK).await;
    assert_eq!(first.text().await.unwrap(), "ok");
    // No chunk for 3 s: abandoned, told once (looked for every 5 s).
    let calls = requests_reach(&site, 1, 15).await;
    let event = signed_event(&site, &calls[0]);
    assert_eq!((&event["type"], &event["token"]), (&"upload.abandoned".into(), &token.as_str().into()));
    let message = event["error_message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{}-clipmp4", bytes.len())) && message.contains("1 chunks"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(site.requests().len(), 1, "told once");
}
