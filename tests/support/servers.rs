//! Where the test servers are: `scripts/test.sh` starts them and exports
//! their addresses. A missing variable fails the test with a clear message.
//! Shared by the test binaries through `#[path]`.
#![allow(dead_code)] // each binary uses its own subset

/// The URL of the Redis server the tests may use (their own, never the
/// machine's shared one); each test works under its own key prefix.
pub fn redis_url() -> String {
    std::env::var("UPLOAD_RECEIVER_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("UPLOAD_RECEIVER_TEST_REDIS_URL is not set: run the tests with scripts/test.sh, which starts a redis-server")
    })
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("test-{}:", hex::encode(upload_receiver::domain::random_bytes::<8>()))
}

/// The S3-compatible server `scripts/test.sh` starts (moto).
pub fn s3_endpoint() -> String {
    std::env::var("UPLOAD_RECEIVER_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("UPLOAD_RECEIVER_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, which starts an S3 server")
    })
}

/// A bucket name no other test uses.
pub fn unique_bucket() -> String {
    format!("test-{}", hex::encode(upload_receiver::domain::random_bytes::<6>()))
}

/// Creates `bucket` on the test S3 server.
pub async fn create_bucket(bucket: &str) {
    s3_client()
        .await
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("the test S3 server creates a bucket");
}

/// The storage configuration for a fresh bucket on the test S3 server.
pub async fn s3_config(part_size: u64) -> upload_receiver::config::StorageConfig {
    let bucket = unique_bucket();
    let config = upload_receiver::config::StorageConfig {
        bucket: Some(bucket.clone()),
        endpoint: Some(s3_endpoint()),
        force_path_style: true,
        part_size,
        timeout_secs: 30,
        ..Default::default()
    };
    create_bucket(&bucket).await;
    config
}

/// A client for the S3 server at `endpoint`.
pub async fn s3_client_at(endpoint: &str) -> aws_sdk_s3::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let config =
        aws_sdk_s3::config::Builder::from(&shared).endpoint_url(endpoint).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates `bucket` on the S3 server at `endpoint`.
pub async fn create_bucket_at(endpoint: &str, bucket: &str) {
    s3_client_at(endpoint)
        .await
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("the S3 server creates a bucket");
}

/// The keys of the multipart uploads open in `bucket` at `endpoint`.
pub async fn s3_open_uploads_at(endpoint: &str, bucket: &str) -> Vec<String> {
    let listed = s3_client_at(endpoint).await.list_multipart_uploads().bucket(bucket).send().await.unwrap();
    listed.uploads().iter().filter_map(|u| u.key().map(str::to_owned)).collect()
}

/// An S3 object store on a fresh bucket, and the bucket's name.
pub async fn s3_store(part_size: u64) -> (upload_receiver::storage::s3::S3ObjectStore, String) {
    let config = s3_config(part_size).await;
    let bucket = config.bucket.clone().unwrap();
    (
        upload_receiver::storage::s3::S3ObjectStore::new(&config, upload_receiver::tasks::Cleanup::default())
            .await
            .unwrap(),
        bucket,
    )
}

/// A plain SDK client for the test server, to look at buckets directly.
pub async fn s3_client() -> aws_sdk_s3::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let config =
        aws_sdk_s3::config::Builder::from(&shared).endpoint_url(s3_endpoint()).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Every object key in `bucket`.
pub async fn s3_keys(bucket: &str) -> Vec<String> {
    let listed = s3_client().await.list_objects_v2().bucket(bucket).send().await.unwrap();
    listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
}

/// The bytes of `key` in `bucket`, or `None` when there is no such object.
pub async fn s3_object(bucket: &str, key: &str) -> Option<Vec<u8>> {
    match s3_client().await.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => Some(object.body.collect().await.expect("the object's body").into_bytes().to_vec()),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
        Err(e) => panic!("reading {key} from the test S3 server failed: {e}"),
    }
}

/// The Content-Type S3 serves `key` of `bucket` with.
pub async fn s3_content_type(bucket: &str, key: &str) -> Option<String> {
    let head = s3_client().await.head_object().bucket(bucket).key(key).send().await;
    head.expect("the object is there").content_type().map(str::to_owned)
}

/// The keys of the multipart uploads open in `bucket`.
pub async fn s3_open_uploads(bucket: &str) -> Vec<String> {
    s3_open_uploads_at(&s3_endpoint(), bucket).await
}
