//! Background callbacks cannot be aimed at the receiver's own network:
//! every spelling of loopback, the private, link-local, shared and
//! unique-local ranges, a name that resolves to loopback, and a permitted
//! site that redirects elsewhere. A listener on every local address counts
//! the connections that reach it: there must be none.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::site::Site;

/// A listener on `[::]` (IPv4 and IPv6, every local address) that counts
/// connections and answers each with `answer`.
struct Trap {
    port: u16,
    connections: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Trap {
    async fn start(answer: String) -> Trap {
        let listener = tokio::net::TcpListener::bind("[::]:0").await.expect("a dual-stack listener");
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 16 * 1024];
                    let _ = stream.read(&mut buffer).await;
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Trap { port, connections, server }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

const OK_PAGE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// Issues a background-mode token for `return_url` and redeems it; returns
/// the plain-text answer.
async fn background_redeem(app: &TestApp, photo_id: &str, return_url: &str) -> String {
    let params = [("return_url", return_url), ("background_return_p", "1")];
    let token = app.replace_token(photo_id, &params).await;
    app.redeem(&token, JPEG_SIGNATURE, &[]).await.text().await.unwrap()
}

#[tokio::test]
async fn callbacks_to_internal_addresses_are_refused_before_connecting() {
    let trap = Trap::start(OK_PAGE.to_owned()).await;
    let app = spawn_app().await;
    let photo_id = app.upload_photo(JPEG_SIGNATURE.to_vec()).await;
    let port = trap.port;
    let targets = [
        format!("http://127.0.0.1:{port}/cb"),
        format!("http://[::1]:{port}/cb"),
        format!("http://[::ffff:127.0.0.1]:{port}/cb"),
        format!("http://0.0.0.0:{port}/cb"),
        format!("http://2130706433:{port}/cb"),
        format!("http://0x7f.1:{port}/cb"),
        format!("http://localhost:{port}/cb"),
        format!("http://10.1.2.3:{port}/cb"),
        format!("http://172.16.0.1:{port}/cb"),
        format!("http://172.31.255.254:{port}/cb"),
        format!("http://192.168.1.1:{port}/cb"),
        format!("http://169.254.169.254:{port}/latest/meta-data/"),
        format!("http://100.64.0.1:{port}/cb"),
        format!("http://[fc00::1]:{port}/cb"),
        format!("http://[fd12:3456::1]:{port}/cb"),
        format!("http://[fe80::1]:{port}/cb"),
        format!("http://[64:ff9b::a9fe:a9fe]:{port}/cb"),
    ];
    for (refused, target) in targets.iter().enumerate() {
        let answer = background_redeem(&app, &photo_id, target).await;
        assert!(answer.starts_with("ok "), "the upload is committed: {target}: {answer}");
        // Refused by the rules, not by the network: counted so, at once.
        let forbidden = app.metric(r#"upload_receiver_callbacks_total{result="forbidden"}"#).await;
        assert_eq!(forbidden, Some(refused as f64 + 1.0), "{target}");
        assert_eq!(trap.connections(), 0, "{target} reached the listener");
    }
    let dead = app.metric(r#"upload_receiver_deliveries_total{channel="callback",result="dead"}"#).await;
    assert_eq!(dead, Some(targets.len() as f64), "none is retried");
}

#[tokio::test]
async fn a_permitted_site_that_redirects_inward_is_not_followed() {
    let trap = Trap::start(OK_PAGE.to_owned()).await;
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://[::1]:{}/steal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        trap.port
    );
    let redirector = Trap::start(redirect).await;
    let app = spawn_app_with(|config| config.callback.allowed_hosts = vec!["127.0.0.1".into()]).await;
    let photo_id = app.upload_photo(JPEG_SIGNATURE.to_vec()).await;
    let answer =
        background_redeem(&app, &photo_id, &format!("http://127.0.0.1:{}/cb", redirector.port)).await;
    assert_eq!(redirector.connections(), 1, "the permitted site was called");
    assert!(answer.starts_with("ok "), "the upload is committed: {answer}");
    // A redirect is not a successful callback, nor one worth repeating.
    assert_eq!(app.metric(r#"upload_receiver_callbacks_total{result="bad_status"}"#).await, Some(1.0));
    assert_eq!(
        app.metric(r#"upload_receiver_deliveries_total{channel="callback",result="dead"}"#).await,
        Some(1.0)
    );
    assert_eq!(trap.connections(), 0, "the redirect was not followed");
}

#[tokio::test]
async fn a_callback_server_that_never_answers_times_out_and_the_upload_stays() {
    let site = Site::start().await;
    let app = spawn_app_with(|config| {
        config.callback.allowed_hosts = vec!["127.0.0.1".into()];
        config.callback.timeout_secs = 1;
    })
    .await;
    let photo_id = app.upload_photo(JPEG_SIGNATURE.to_vec()).await;
    let started = std::time::Instant::now();
    let answer = background_redeem(&app, &photo_id, &site.url("/silent")).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "answered within the callback timeout: {took:?}");
    assert!(answer.starts_with("ok "), "the upload is committed, whatever the callback did: {answer}");
    let retried = app.metric(r#"upload_receiver_deliveries_total{channel="callback",result="retry"}"#).await;
    assert_eq!(retried, Some(1.0), "the callback is kept for a retry");
    let photo = app.photo(&photo_id).await;
    assert_eq!(photo.versions.len(), 2, "the upload stays committed");
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let counted = metrics
        .lines()
        .any(|l| l.contains("callback") && l.contains("timeout") && l.trim_end().ends_with(" 1"));
    assert!(counted, "the timeout is counted:\n{metrics}");
}
