//! Chunked uploads on two receivers sharing Redis and S3: chunks on either
//! instance, the last two on both at once, and Redis paused mid-file.

use std::time::Duration;

use upload_receiver::config::Config;

use crate::chunk_client::*;
use crate::common::*;
use crate::processes;
use crate::site::Site;

/// Two receivers on one Redis prefix and one bucket whose callbacks may
/// reach the loopback site.
async fn two_instances() -> (TestApp, TestApp) {
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.callback.allowed_hosts = vec!["127.0.0.1".into()];
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    (a, b)
}

#[tokio::test]
async fn chunks_alternating_between_the_instances_make_one_version_byte_for_byte() {
    let (a, b) = two_instances().await;
    let f = PhotoApp::on(a).await;
    let token = f.token(&[]).await;
    // 7 MiB + 5 in 1 MiB chunks: two parts of staged chunks, made on
    // whichever instance stores a part's last chunk.
    let bytes = content(7 * MIB + 5);
    for number in [1, 2, 3, 4, 5, 6, 7] {
        let via = if number % 2 == 0 { &b } else { &f.app };
        let response = send_chunk(via, &token, &bytes, number, MIB).await;
        assert_eq!(response.status(), 200, "chunk {number}");
    }
    let photo = f.photo().await;
    assert_eq!(photo.versions.len(), 2);
    let stored = f.object_bytes(&photo.current_version().file.object_key).await;
    assert!(stored.as_deref() == Some(&bytes[..]), "byte for byte");
    assert_eq!(f.stored_objects().await.len(), 2, "nothing staged or open: {:?}", f.stored_objects().await);
}

#[tokio::test]
async fn the_last_two_chunks_at_once_on_both_instances_make_one_version_and_one_callback() {
    let (a, b) = two_instances().await;
    let site = Site::start().await;
    let f = PhotoApp::on(a).await;
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        let token = f.token(&[("return_url", &site.url("/cb")), ("background_return_p", "1")]).await;
        let bytes = content(4 * MIB + round);
        for number in [1, 2] {
            assert_eq!(send_chunk(&f.app, &token, &bytes, number, MIB).await.status(), 200);
        }
        let (three, four) =
            tokio::join!(send_chunk(&f.app, &token, &bytes, 3, MIB), send_chunk(&b, &token, &bytes, 4, MIB));
        // One instance completes the file; the other's chunk, stored while
        // the last was arriving, answers "ok" or waits for the same outcome.
        let answers = [three.text().await.unwrap(), four.text().await.unwrap()];
        let outcomes: Vec<&String> = answers.iter().filter(|a| a.as_str() != "ok").collect();
        assert!(!outcomes.is_empty(), "{answers:?}");
        assert!(
            outcomes.iter().all(|a| a.starts_with("ok videos.example.com") && *a == outcomes[0]),
            "{answers:?}"
        );
        // Sent again, on either instance: the same answer, no new callback.
        let again = send_chunk(&b, &token, &bytes, 1, MIB).await.text().await.unwrap();
        assert!(again.starts_with("ok videos.example.com"), "{again}");
        assert_eq!(f.uploads_used(&token).await, 1);
    }
    assert_eq!(f.photo().await.versions.len(), 1 + ROUNDS, "one version per file");
    assert_eq!(site.requests().len(), ROUNDS, "one callback per file: {:?}", site.requests());
}

#[tokio::test]
async fn with_redis_paused_mid_file_a_chunk_gets_503_and_the_file_completes_once() {
    let redis = processes::redis();
    let mut config: Config = test_config();
    use_redis_and_s3(&mut config);
    config.state.redis_url = Some(format!("redis://127.0.0.1:{}/", redis.port));
    config.state.redis_timeout_secs = 1;
    let f = PhotoApp::on(spawn_app_from(config).await).await;
    let token = f.token(&[]).await;
    let bytes = content(3 * MIB);
    assert_eq!(send_chunk(&f, &token, &bytes, 1, MIB).await.status(), 200);

    redis.signal("STOP");
    let during = send_chunk(&f, &token, &bytes, 2, MIB).await;
    redis.signal("CONT");
    assert_eq!(during.status(), 503, "a passing failure, retried by the libraries");
    assert!(during.headers().contains_key("retry-after"));

    tokio::time::sleep(Duration::from_millis(200)).await;
    // The libraries send the chunk again, and go on.
    for number in [2, 3] {
        assert_eq!(send_chunk(&f, &token, &bytes, number, MIB).await.status(), 200, "chunk {number}");
    }
    let status = f.token_status(&token).await;
    assert_eq!((status.uploads_used, status.uploads_in_flight), (1, 0));
    let photo = f.photo().await;
    assert_eq!(photo.versions.len(), 2, "completed once");
    let stored = f.object_bytes(&photo.current_version().file.object_key).await;
    assert!(stored.as_deref() == Some(&bytes[..]), "byte for byte");
}
