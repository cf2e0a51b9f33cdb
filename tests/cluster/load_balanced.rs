//! Two receivers on one Redis and one bucket, behind nginx.

use upload_receiver::config::Config;

use crate::common::*;
use crate::processes::{self, Owned};
use crate::servers;

/// Two receivers forming one cluster, and nginx in front of them.
struct Cluster {
    a: TestApp,
    b: TestApp,
    _lb: Owned,
    lb_url: String,
    bucket: String,
}

async fn cluster() -> Cluster {
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    // Each instance may take every one of the hundred concurrent redeems.
    config.limits.max_concurrent_uploads = 128;
    let bucket = config.storage.bucket.clone().unwrap();
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let addresses = [a.running.as_ref().unwrap().address, b.running.as_ref().unwrap().address];
    let lb = processes::nginx(&addresses);
    let lb_url = format!("http://127.0.0.1:{}", lb.port);
    Cluster { a, b, _lb: lb, lb_url, bucket }
}

impl Cluster {
    /// A handle that signs and sends through the load balancer.
    fn via_lb(&self) -> TestApp {
        let mut handle = TestApp::handle_of(&self.a);
        handle.base_url = self.lb_url.clone();
        handle
    }
}

#[tokio::test]
async fn a_token_issued_by_one_instance_is_redeemed_through_the_other() {
    let c = cluster().await;
    let photo_id = c.a.upload_photo(b"original".to_vec()).await;
    let token = c.a.replace_token(&photo_id, &[]).await;
    let response = c.b.redeem(&token, b"via b", &[]).await;
    assert_eq!(response.status(), 200);
    let photo = c.a.photo(&photo_id).await;
    assert_eq!(photo.versions.len(), 2, "instance a sees the version instance b stored");
}

#[tokio::test]
async fn a_hundred_concurrent_redeems_through_the_balancer_store_exactly_three() {
    let c = cluster().await;
    let lb = PhotoApp::on(c.via_lb()).await;
    let token = lb.token(&[("max_uploads", "3")]).await;
    let statuses = lb.redeem_at_once(&token, 100, |i| format!("upload {i} ").repeat(2000).into_bytes()).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 97, "{statuses:?}");
    assert_eq!(servers::s3_keys(&c.bucket).await.len(), 4, "the original and three replacements");
    assert!(servers::s3_open_uploads(&c.bucket).await.is_empty());
    // Both instances served some of them.
    for app in [&c.a, &c.b] {
        let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains(r#"endpoint="redeem""#), "an instance served no redeem");
    }
}

#[tokio::test]
async fn multipart_uploads_through_the_balancer_complete_and_leave_none_open() {
    let c = cluster().await;
    let lb = PhotoApp::on(c.via_lb()).await;
    let token = lb.token(&[("max_uploads", "2")]).await;
    let content: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    for _ in 0..2 {
        let response = lb.redeem(&token, &content, &[]).await;
        assert_eq!(response.status(), 200);
    }
    let photo = c.b.photo(&lb.photo_id).await;
    use sha2::Digest;
    assert_eq!(photo.current_version().file.sha256, hex::encode(sha2::Sha256::digest(&content)));
    assert!(servers::s3_open_uploads(&c.bucket).await.is_empty());
}

#[tokio::test]
async fn a_signed_request_replayed_against_the_other_instance_is_refused() {
    let c = cluster().await;
    let writer = c.a.writer.clone();
    let request =
        c.a.signed_request(&writer, "/api/echo", &[("x", "1")], Placement::Query, &Signing::default());
    let request = request.build().unwrap();
    let url = request.url().clone();
    assert_ok(&text(c.a.http.get(url.clone())).await);
    // The same request, Host header and all, sent to the other instance.
    let b_address = c.b.running.as_ref().unwrap().address;
    let mut replay = url.clone();
    replay.set_port(Some(b_address.port())).unwrap();
    let host = url.authority().to_owned();
    let body = text(c.b.http.get(replay).header("host", host)).await;
    let message = assert_error(&body, "invalid_signature");
    assert!(message.contains("nonce"), "{message}");
}
