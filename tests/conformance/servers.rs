//! Where the test servers are: `scripts/test.sh` starts them and exports
//! their addresses. A missing variable fails the test with a clear message.

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
