//! Background callbacks kept until the site answers: the client is told
//! the outcome at once, a failed callback is retried with growing delays
//! (by whichever instance, after a restart too), a refusal that will not
//! pass is not retried.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::site::{Recorded, Site};

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
