//! The `StateStore` contract, checked against each implementation.

use std::sync::Arc;
use std::time::Duration;

use upload_receiver::domain::{PhotoId, ReplaceToken, unix_now};
use upload_receiver::store::embedded::EmbeddedStore;
use upload_receiver::store::redis::RedisStore;
use upload_receiver::store::{
    CommitError, NewPhoto, NonceKey, ReserveError, StateStore, TokenGrant, VersionFile,
};

use crate::servers;

fn version(key: &str) -> VersionFile {
    VersionFile {
        object_key: key.to_owned(),
        size: 1234,
        content_type: "image/jpeg".to_owned(),
        sha256: "ab".repeat(32),
        original_filename: Some("a.jpg".to_owned()),
        created_at: unix_now(),
    }
}

async fn new_photo(store: &dyn StateStore) -> PhotoId {
    let new =
        NewPhoto { tree_id: "7".into(), title: Some("t".into()), first_version: version("media/first") };
    store.create_photo(new).await.unwrap().photo_id
}

async fn new_token(
    store: &dyn StateStore,
    photo_id: PhotoId,
    max_uploads: u32,
    valid_until: u64,
) -> ReplaceToken {
    let token = ReplaceToken::generate();
    let grant = TokenGrant {
        token: token.clone(),
        photo_id,
        max_uploads,
        issued_at: unix_now(),
        valid_until,
        return_url: Some("http://example.com/cb".into()),
        background_return: true,
        issued_to: "ck".into(),
    };
    store.issue_token(grant).await.unwrap();
    token
}

/// Runs every case against one store.
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            async fn store() -> (Arc<dyn StateStore>, Option<tempfile::TempDir>) {
                $make
            }

            #[tokio::test]
            async fn photos_get_increasing_ids_and_keep_their_versions() {
                let (s, _dir) = store().await;
                photos_get_increasing_ids_and_keep_their_versions_case(&*s).await;
            }

            #[tokio::test]
            async fn tokens_are_stored_with_their_terms() {
                let (s, _dir) = store().await;
                tokens_are_stored_with_their_terms_case(&*s).await;
            }

            #[tokio::test]
            async fn reservations_refuse_unknown_expired_and_used_up_tokens() {
                let (s, _dir) = store().await;
                reservations_refuse_unknown_expired_and_used_up_tokens_case(&*s).await;
            }

            #[tokio::test]
            async fn a_refund_frees_one_slot_once() {
                let (s, _dir) = store().await;
                a_refund_frees_one_slot_once_case(&*s).await;
            }

            #[tokio::test]
            async fn leases_that_ran_out_free_their_slot_and_cannot_commit() {
                let (s, _dir) = store().await;
                leases_that_ran_out_free_their_slot_and_cannot_commit_case(&*s).await;
            }

            #[tokio::test]
            async fn a_renewed_lease_outlives_its_first_end() {
                let (s, _dir) = store().await;
                a_renewed_lease_outlives_its_first_end_case(&*s).await;
            }

            #[tokio::test]
            async fn concurrent_reservations_never_exceed_max_uploads() {
                let (s, _dir) = store().await;
                concurrent_reservations_never_exceed_max_uploads_case(s).await;
            }

            #[tokio::test]
            async fn a_nonce_is_accepted_once() {
                let (s, _dir) = store().await;
                a_nonce_is_accepted_once_case(&*s).await;
            }
        }
    };
}

conformance!(embedded, {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    (store, Some(dir))
});

conformance!(redis, {
    let store =
        RedisStore::new(&servers::redis_url(), &servers::unique_prefix(), Duration::from_secs(2)).unwrap();
    let store: Arc<dyn StateStore> = Arc::new(store);
    (store, None)
});

async fn photos_get_increasing_ids_and_keep_their_versions_case(s: &dyn StateStore) {
    let first = new_photo(s).await;
    let second = new_photo(s).await;
    assert!(second > first);
    let photo = s.photo(first).await.unwrap().unwrap();
    assert_eq!((photo.tree_id.as_str(), photo.title.as_deref()), ("7", Some("t")));
    assert_eq!(photo.versions.len(), 1);
    assert_eq!(photo.current_version().number, 1);
    assert_eq!(photo.current_version().file, version("media/first"));
    let updated = s.add_version(first, version("media/second")).await.unwrap().unwrap();
    assert_eq!(updated.current_version().number, 2);
    assert_eq!(updated.current_version().file.object_key, "media/second");
    assert_eq!(s.photo(first).await.unwrap().unwrap(), updated);
    assert_eq!(s.photo(PhotoId(u64::MAX / 2)).await.unwrap(), None);
    assert!(s.add_version(PhotoId(u64::MAX / 2), version("media/x")).await.unwrap().is_none());
}

async fn tokens_are_stored_with_their_terms_case(s: &dyn StateStore) {
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 4, unix_now() + 600).await;
    let (grant, used) = s.token(&token).await.unwrap().unwrap();
    assert_eq!((grant.photo_id, grant.max_uploads, used), (photo, 4, 0));
    assert_eq!(grant.return_url.as_deref(), Some("http://example.com/cb"));
    assert!(s.token(&ReplaceToken::generate()).await.unwrap().is_none());
}

async fn reservations_refuse_unknown_expired_and_used_up_tokens_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    assert!(matches!(s.reserve_slot(&ReplaceToken::generate(), now, 60).await, Err(ReserveError::Unknown)));
    let expired = new_token(s, photo, 1, now - 1).await;
    assert!(matches!(s.reserve_slot(&expired, now, 60).await, Err(ReserveError::Expired)));
    let token = new_token(s, photo, 2, now + 600).await;
    let a = s.reserve_slot(&token, now, 60).await.unwrap();
    let b = s.reserve_slot(&token, now, 60).await.unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.grant.photo_id, photo);
    assert!(matches!(s.reserve_slot(&token, now, 60).await, Err(ReserveError::UsedUp)), "live leases count");
    let photo_after = s.commit_version(&a, version("media/a"), now).await.unwrap();
    assert_eq!(photo_after.current_version().number, 2);
    s.commit_version(&b, version("media/b"), now).await.unwrap();
    assert!(matches!(s.reserve_slot(&token, now, 60).await, Err(ReserveError::UsedUp)));
    assert_eq!(s.token(&token).await.unwrap().unwrap().1, 2);
    let versions: Vec<String> =
        s.photo(photo).await.unwrap().unwrap().versions.iter().map(|v| v.file.object_key.clone()).collect();
    assert_eq!(versions, ["media/first", "media/a", "media/b"]);
    assert!(matches!(s.commit_version(&a, version("media/again"), now).await, Err(CommitError::LeaseLost)));
}

async fn a_refund_frees_one_slot_once_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 1, now + 600).await;
    let a = s.reserve_slot(&token, now, 60).await.unwrap();
    s.refund_slot(&a).await.unwrap();
    let b = s.reserve_slot(&token, now, 60).await.unwrap();
    s.refund_slot(&a).await.unwrap();
    assert!(
        matches!(s.reserve_slot(&token, now, 60).await, Err(ReserveError::UsedUp)),
        "a second refund frees nothing"
    );
    assert!(matches!(s.commit_version(&a, version("media/a"), now).await, Err(CommitError::LeaseLost)));
    s.commit_version(&b, version("media/b"), now).await.unwrap();
    assert_eq!(s.photo(photo).await.unwrap().unwrap().versions.len(), 2);
}

async fn leases_that_ran_out_free_their_slot_and_cannot_commit_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 1, now + 600).await;
    let stale = s.reserve_slot(&token, now, 10).await.unwrap();
    let later = now + 11;
    let fresh = s.reserve_slot(&token, later, 10).await.unwrap();
    assert!(matches!(
        s.commit_version(&stale, version("media/stale"), later).await,
        Err(CommitError::LeaseLost)
    ));
    assert!(!s.renew_reservation(&stale, later, 10).await.unwrap());
    s.commit_version(&fresh, version("media/fresh"), later).await.unwrap();
    let photo = s.photo(photo).await.unwrap().unwrap();
    assert_eq!(photo.current_version().file.object_key, "media/fresh");
    assert_eq!(photo.versions.len(), 2, "the stale upload recorded nothing");
}

async fn a_renewed_lease_outlives_its_first_end_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 1, now + 600).await;
    let reservation = s.reserve_slot(&token, now, 10).await.unwrap();
    assert!(s.renew_reservation(&reservation, now + 5, 10).await.unwrap());
    assert!(matches!(s.reserve_slot(&token, now + 12, 10).await, Err(ReserveError::UsedUp)), "still held");
    s.commit_version(&reservation, version("media/renewed"), now + 12).await.unwrap();
}

async fn concurrent_reservations_never_exceed_max_uploads_case(s: Arc<dyn StateStore>) {
    let now = unix_now();
    let photo = new_photo(&*s).await;
    let token = new_token(&*s, photo, 3, now + 600).await;
    let attempts = (0..64).map(|_| {
        let (s, token) = (Arc::clone(&s), token.clone());
        tokio::spawn(async move { s.reserve_slot(&token, now, 60).await })
    });
    let results = futures_util::future::join_all(attempts).await;
    let granted: Vec<_> = results.into_iter().filter_map(|r| r.unwrap().ok()).collect();
    assert_eq!(granted.len(), 3);
    let commits = granted.iter().enumerate().map(|(i, r)| {
        let (s, r) = (Arc::clone(&s), r.clone());
        tokio::spawn(async move { s.commit_version(&r, version(&format!("media/c{i}")), now).await })
    });
    for commit in futures_util::future::join_all(commits).await {
        commit.unwrap().unwrap();
    }
    let photo = s.photo(photo).await.unwrap().unwrap();
    let numbers: Vec<u32> = photo.versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
}

async fn a_nonce_is_accepted_once_case(s: &dyn StateStore) {
    let key = NonceKey {
        consumer_key: "ck".into(),
        token: "tk".into(),
        nonce: hex::encode(upload_receiver::domain::random_bytes::<8>()),
        timestamp: unix_now(),
    };
    let expires = unix_now() + 600;
    assert!(s.first_use_of_nonce(&key, expires).await.unwrap());
    assert!(!s.first_use_of_nonce(&key, expires).await.unwrap());
    let other = NonceKey { timestamp: key.timestamp + 1, ..key.clone() };
    assert!(s.first_use_of_nonce(&other, expires).await.unwrap(), "another timestamp is another request");
}

/// What only the Redis store promises: keys that expire with their token,
/// and scripts that survive the server forgetting them.
mod redis_specific {
    use super::*;

    async fn raw_connection() -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(servers::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    #[tokio::test]
    async fn token_keys_expire_with_their_token() {
        let prefix = servers::unique_prefix();
        let store = RedisStore::new(&servers::redis_url(), &prefix, Duration::from_secs(2)).unwrap();
        let photo = new_photo(&store).await;
        let token = new_token(&store, photo, 1, unix_now() + 600).await;
        let key = format!("{prefix}{{t:{}}}", token.as_str());
        let ttl: i64 = ::redis::cmd("TTL").arg(&key).query_async(&mut raw_connection().await).await.unwrap();
        assert!((595..=660).contains(&ttl), "ttl {ttl}");
    }

    #[tokio::test]
    async fn a_flushed_script_cache_is_reloaded_and_counts_once() {
        let store = RedisStore::new(&servers::redis_url(), &servers::unique_prefix(), Duration::from_secs(2))
            .unwrap();
        let now = unix_now();
        let photo = new_photo(&store).await;
        let token = new_token(&store, photo, 2, now + 600).await;
        let _: () =
            ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw_connection().await).await.unwrap();
        let reservation = store.reserve_slot(&token, now, 60).await.unwrap();
        store.commit_version(&reservation, version("media/after-flush"), now).await.unwrap();
        assert_eq!(store.token(&token).await.unwrap().unwrap().1, 1);
        assert_eq!(store.photo(photo).await.unwrap().unwrap().versions.len(), 2);
    }

    #[tokio::test]
    async fn a_commit_cut_between_its_steps_is_finished_by_the_repair() {
        let prefix = servers::unique_prefix();
        let store = RedisStore::new(&servers::redis_url(), &prefix, Duration::from_secs(2)).unwrap();
        let now = unix_now();
        let photo = new_photo(&store).await;
        let token = new_token(&store, photo, 1, now + 600).await;
        let reservation = store.reserve_slot(&token, now, 60).await.unwrap();
        // Step 1 only, as if the instance died right after it.
        let pending = serde_json::json!({"photo_id": photo, "version": version("media/cut")}).to_string();
        let consume = ::redis::Script::new(include_str!("../../src/store/lua/consume_slot.lua"));
        let key = format!("{prefix}{{t:{}}}", token.as_str());
        let done: i64 = consume
            .key(&key)
            .key(format!("{key}:leases"))
            .arg(now)
            .arg(&reservation.id)
            .arg(pending)
            .invoke_async(&mut raw_connection().await)
            .await
            .unwrap();
        assert_eq!(done, 1);
        assert_eq!(
            store.photo(photo).await.unwrap().unwrap().versions.len(),
            1,
            "the version is not there yet"
        );
        assert!(
            matches!(store.reserve_slot(&token, now, 60).await, Err(ReserveError::UsedUp)),
            "the slot is spent"
        );
        assert_eq!(store.complete_pending_commits().await.unwrap(), 1);
        let versions = store.photo(photo).await.unwrap().unwrap().versions;
        assert_eq!(versions.last().unwrap().file.object_key, "media/cut");
        assert_eq!(store.complete_pending_commits().await.unwrap(), 0, "finished once");
        assert_eq!(store.photo(photo).await.unwrap().unwrap().versions.len(), 2);
    }
}
