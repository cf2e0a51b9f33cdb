//! The `StateStore` contract, checked against each implementation.

use std::sync::Arc;
use std::time::Duration;

use upload_receiver::domain::{PhotoId, ReplaceToken, unix_now};
use upload_receiver::store::embedded::EmbeddedStore;
use upload_receiver::store::redis::RedisStore;
use upload_receiver::store::{
    CommitError, MetadataUpdate, NewPhoto, NonceKey, Outbox, PhotoMetadata, ReserveError, StateStore,
    TokenGrant, TokenKind, TokenPurpose, TokenUpdate, UploadTerms, VersionFile, new_reservation_id,
};

use crate::servers;

pub fn version(key: &str) -> VersionFile {
    VersionFile {
        object_key: key.to_owned(),
        size: 1234,
        content_type: "image/jpeg".to_owned(),
        sha256: "ab".repeat(32),
        crc64nvme: None,
        original_filename: Some("a.jpg".to_owned()),
        created_at: unix_now(),
    }
}

pub async fn new_photo(store: &dyn StateStore) -> PhotoId {
    let new = NewPhoto {
        tree_id: "7".into(),
        metadata: PhotoMetadata { title: Some("t".into()), ..PhotoMetadata::default() },
        first_version: version("media/first"),
    };
    store.create_photo(new).await.unwrap().photo_id
}

pub async fn new_token(
    store: &dyn StateStore,
    photo_id: PhotoId,
    max_uploads: u32,
    valid_until: u64,
) -> ReplaceToken {
    let token = ReplaceToken::generate();
    let grant = TokenGrant {
        token: token.clone(),
        purpose: TokenPurpose::Replace { photo_id },
        max_uploads,
        issued_at: unix_now(),
        valid_until,
        return_url: Some("http://example.com/cb".into()),
        background_return: true,
        issued_to: "ck".into(),
    };
    assert!(store.issue_token(grant).await.unwrap(), "the photo exists");
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
            async fn a_reservation_made_again_or_withdrawn_takes_no_second_slot() {
                let (s, _dir) = store().await;
                a_reservation_made_again_or_withdrawn_takes_no_second_slot_case(&*s).await;
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
            async fn failed_redeems_are_counted_per_client_and_minute() {
                let (s, _dir) = store().await;
                failed_redeems_are_counted_per_client_and_minute_case(&*s).await;
            }

            #[tokio::test]
            async fn upload_tokens_create_photos_with_their_metadata() {
                let (s, _dir) = store().await;
                upload_tokens_create_photos_with_their_metadata_case(&*s).await;
            }

            #[tokio::test]
            async fn updates_reach_the_photos_made_and_the_files_to_come() {
                let (s, _dir) = store().await;
                updates_reach_the_photos_made_and_the_files_to_come_case(&*s).await;
            }

            #[tokio::test]
            async fn an_upload_token_keeps_metadata_for_a_bounded_number_of_files() {
                let (s, _dir) = store().await;
                an_upload_token_keeps_metadata_for_a_bounded_number_of_files_case(&*s).await;
            }

            #[tokio::test]
            async fn the_latest_change_wins_and_reaches_every_photo_of_a_file() {
                let (s, _dir) = store().await;
                the_latest_change_wins_and_reaches_every_photo_of_a_file_case(&*s).await;
            }

            #[tokio::test]
            async fn concurrent_upload_commits_make_distinct_photos() {
                let (s, _dir) = store().await;
                concurrent_upload_commits_make_distinct_photos_case(s).await;
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
    assert_eq!((photo.tree_id.as_str(), photo.metadata.title.as_deref()), ("7", Some("t")));
    assert_eq!(photo.versions.len(), 1);
    assert_eq!(photo.current_version().number, 1);
    assert_eq!(photo.current_version().file, version("media/first"));
    let recorded = s.add_version(first, version("media/second")).await.unwrap().unwrap();
    assert_eq!((recorded.photo_id, &recorded.token, recorded.version.number), (first, &photo.token, 2));
    assert_eq!(recorded.version.file.object_key, "media/second");
    let updated = s.photo(first).await.unwrap().unwrap();
    assert_eq!(updated.versions.len(), 2);
    assert_eq!(updated.versions[0], photo.versions[0], "the first version is kept");
    assert_eq!(updated.current_version(), &recorded.version);
    assert_eq!(s.photo(PhotoId(u64::MAX / 2)).await.unwrap(), None);
    assert!(s.add_version(PhotoId(u64::MAX / 2), version("media/x")).await.unwrap().is_none());
}

async fn tokens_are_stored_with_their_terms_case(s: &dyn StateStore) {
    let photo = new_photo(s).await;
    let now = unix_now();
    let token = new_token(s, photo, 4, now + 600).await;
    let status = s.token_status(&token, now).await.unwrap().unwrap();
    let grant = status.grant.clone();
    assert_eq!(
        (grant.photo_id(), grant.max_uploads, status.uploads_used, status.uploads_in_flight),
        (Some(photo), 4, 0, 0)
    );
    assert_eq!(grant.return_url.as_deref(), Some("http://example.com/cb"));
    assert!(s.token_status(&ReplaceToken::generate(), now).await.unwrap().is_none());

    // Live leases are in flight; committed ones are used; run-out ones neither.
    let committed = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    s.commit_version(&committed, version("media/used"), now, None, &Outbox::default()).await.unwrap();
    let _live = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    let _short = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 10).await.unwrap();
    let status = s.token_status(&token, now).await.unwrap().unwrap();
    assert_eq!((status.uploads_used, status.uploads_in_flight), (1, 2));
    let later = s.token_status(&token, now + 11).await.unwrap().unwrap();
    assert_eq!((later.uploads_used, later.uploads_in_flight), (1, 1), "the 10 s lease ran out");

    let mut orphan = grant;
    orphan.token = ReplaceToken::generate();
    orphan.purpose = TokenPurpose::Replace { photo_id: PhotoId(u64::MAX / 2) };
    assert!(!s.issue_token(orphan.clone()).await.unwrap(), "no token for a photo that does not exist");
    assert!(s.token_status(&orphan.token, now).await.unwrap().is_none(), "nothing stored");
}

async fn in_flight(s: &dyn StateStore, token: &ReplaceToken, now: u64) -> u32 {
    s.token_status(token, now).await.unwrap().unwrap().uploads_in_flight
}

async fn a_reservation_made_again_or_withdrawn_takes_no_second_slot_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 2, now + 600).await;

    // A reserve sent again (its answer was lost) is the same reservation.
    let id = new_reservation_id();
    let first = s.reserve_slot(&token, TokenKind::Replace, &id, now, 60).await.unwrap();
    let again = s.reserve_slot(&token, TokenKind::Replace, &id, now + 1, 60).await.unwrap();
    assert_eq!((again.id.as_str(), again.lease_until), (first.id.as_str(), first.lease_until));
    assert_eq!(in_flight(s, &token, now).await, 1);
    // Withdrawn: its slot is back, and it is never made again.
    s.withdraw_reservation(&token, &id, now + 60).await.unwrap();
    assert_eq!(in_flight(s, &token, now).await, 0);
    assert!(matches!(
        s.reserve_slot(&token, TokenKind::Replace, &id, now, 60).await,
        Err(ReserveError::Store(_))
    ));
    // Withdrawn before its reserve arrives (the store took them out of order).
    let late = new_reservation_id();
    s.withdraw_reservation(&token, &late, now + 60).await.unwrap();
    assert!(matches!(
        s.reserve_slot(&token, TokenKind::Replace, &late, now, 60).await,
        Err(ReserveError::Store(_))
    ));
    assert_eq!(in_flight(s, &token, now).await, 0);
    // Both slots are free for others.
    for _ in 0..2 {
        s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    }
    assert_eq!(in_flight(s, &token, now).await, 2);
}

async fn reservations_refuse_unknown_expired_and_used_up_tokens_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    assert!(matches!(
        s.reserve_slot(&ReplaceToken::generate(), TokenKind::Replace, &new_reservation_id(), now, 60).await,
        Err(ReserveError::Unknown)
    ));
    let expired = new_token(s, photo, 1, now - 1).await;
    assert!(matches!(
        s.reserve_slot(&expired, TokenKind::Replace, &new_reservation_id(), now, 60).await,
        Err(ReserveError::Expired)
    ));
    let token = new_token(s, photo, 2, now + 600).await;
    let a = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    let b = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.grant.photo_id(), Some(photo));
    assert!(
        matches!(
            s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await,
            Err(ReserveError::UsedUp)
        ),
        "live leases count"
    );
    let photo_after = s.commit_version(&a, version("media/a"), now, None, &Outbox::default()).await.unwrap();
    assert_eq!(photo_after.version.number, 2);
    s.commit_version(&b, version("media/b"), now, None, &Outbox::default()).await.unwrap();
    assert!(matches!(
        s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await,
        Err(ReserveError::UsedUp)
    ));
    assert_eq!(s.token_status(&token, now).await.unwrap().unwrap().uploads_used, 2);
    let versions: Vec<String> =
        s.photo(photo).await.unwrap().unwrap().versions.iter().map(|v| v.file.object_key.clone()).collect();
    assert_eq!(versions, ["media/first", "media/a", "media/b"]);
    assert!(matches!(
        s.commit_version(&a, version("media/again"), now, None, &Outbox::default()).await,
        Err(CommitError::LeaseLost)
    ));
}

async fn a_refund_frees_one_slot_once_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 1, now + 600).await;
    let a = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    s.refund_slot(&a).await.unwrap();
    let b = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    s.refund_slot(&a).await.unwrap();
    assert!(
        matches!(
            s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await,
            Err(ReserveError::UsedUp)
        ),
        "a second refund frees nothing"
    );
    assert!(matches!(
        s.commit_version(&a, version("media/a"), now, None, &Outbox::default()).await,
        Err(CommitError::LeaseLost)
    ));
    s.commit_version(&b, version("media/b"), now, None, &Outbox::default()).await.unwrap();
    assert_eq!(s.photo(photo).await.unwrap().unwrap().versions.len(), 2);
}

async fn leases_that_ran_out_free_their_slot_and_cannot_commit_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 1, now + 600).await;
    let stale = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 10).await.unwrap();
    let later = now + 11;
    let fresh = s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), later, 10).await.unwrap();
    assert!(matches!(
        s.commit_version(&stale, version("media/stale"), later, None, &Outbox::default()).await,
        Err(CommitError::LeaseLost)
    ));
    assert!(!s.renew_reservation(&stale, later, 10).await.unwrap());
    s.commit_version(&fresh, version("media/fresh"), later, None, &Outbox::default()).await.unwrap();
    let photo = s.photo(photo).await.unwrap().unwrap();
    assert_eq!(photo.current_version().file.object_key, "media/fresh");
    assert_eq!(photo.versions.len(), 2, "the stale upload recorded nothing");
}

async fn a_renewed_lease_outlives_its_first_end_case(s: &dyn StateStore) {
    let now = unix_now();
    let photo = new_photo(s).await;
    let token = new_token(s, photo, 1, now + 600).await;
    let reservation =
        s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 10).await.unwrap();
    assert!(s.renew_reservation(&reservation, now + 5, 10).await.unwrap());
    assert!(
        matches!(
            s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now + 12, 10).await,
            Err(ReserveError::UsedUp)
        ),
        "still held"
    );
    s.commit_version(&reservation, version("media/renewed"), now + 12, None, &Outbox::default())
        .await
        .unwrap();
}

async fn concurrent_reservations_never_exceed_max_uploads_case(s: Arc<dyn StateStore>) {
    let now = unix_now();
    let photo = new_photo(&*s).await;
    let token = new_token(&*s, photo, 3, now + 600).await;
    let attempts = (0..64).map(|_| {
        let (s, token) = (Arc::clone(&s), token.clone());
        tokio::spawn(async move {
            s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await
        })
    });
    let results = futures_util::future::join_all(attempts).await;
    let granted: Vec<_> = results.into_iter().filter_map(|r| r.unwrap().ok()).collect();
    assert_eq!(granted.len(), 3);
    let commits = granted.iter().enumerate().map(|(i, r)| {
        let (s, r) = (Arc::clone(&s), r.clone());
        tokio::spawn(async move {
            s.commit_version(&r, version(&format!("media/c{i}")), now, None, &Outbox::default()).await
        })
    });
    for commit in futures_util::future::join_all(commits).await {
        commit.unwrap().unwrap();
    }
    let photo = s.photo(photo).await.unwrap().unwrap();
    let numbers: Vec<u32> = photo.versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
}

async fn failed_redeems_are_counted_per_client_and_minute_case(s: &dyn StateStore) {
    let window = unix_now() / 60;
    let client = "203.0.113.5";
    assert_eq!(s.redeem_failures(client, window).await.unwrap(), 0);
    assert_eq!(s.count_redeem_failure(client, window).await.unwrap(), 1);
    assert_eq!(s.count_redeem_failure(client, window).await.unwrap(), 2);
    assert_eq!(s.redeem_failures(client, window).await.unwrap(), 2);
    assert_eq!(s.redeem_failures(client, window + 1).await.unwrap(), 0, "a new minute starts afresh");
    assert_eq!(s.redeem_failures("2001:db8::/64", window).await.unwrap(), 0, "another client");
}

async fn new_upload_token(store: &dyn StateStore, max_uploads: u32, valid_until: u64) -> ReplaceToken {
    let token = ReplaceToken::generate();
    let metadata = PhotoMetadata {
        title: Some("From the token".into()),
        tags: Some("a b".into()),
        publish: false,
        user_id: Some("17".into()),
        ..PhotoMetadata::default()
    };
    let grant = TokenGrant {
        token: token.clone(),
        purpose: TokenPurpose::Upload {
            upload: Box::new(UploadTerms {
                tree_id: "9".into(),
                metadata,
                extras: vec![("theme".into(), "green".into())],
            }),
        },
        max_uploads,
        issued_at: unix_now(),
        valid_until,
        return_url: None,
        background_return: false,
        issued_to: "ck".into(),
    };
    assert!(store.issue_token(grant).await.unwrap(), "upload tokens need no photo");
    token
}

fn title(value: &str) -> MetadataUpdate {
    MetadataUpdate { title: Some(value.into()), ..MetadataUpdate::default() }
}

async fn upload_tokens_create_photos_with_their_metadata_case(s: &dyn StateStore) {
    let now = unix_now();
    let token = new_upload_token(s, 2, now + 600).await;
    assert!(
        matches!(
            s.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await,
            Err(ReserveError::Unknown)
        ),
        "an upload token is not a replace token"
    );
    let photo = new_photo(s).await;
    let replace = new_token(s, photo, 1, now + 600).await;
    assert!(matches!(
        s.reserve_slot(&replace, TokenKind::Upload, &new_reservation_id(), now, 60).await,
        Err(ReserveError::Unknown)
    ));

    let reservation =
        s.reserve_slot(&token, TokenKind::Upload, &new_reservation_id(), now, 60).await.unwrap();
    assert_eq!(reservation.grant.photo_id(), None);
    let recorded =
        s.commit_version(&reservation, version("media/new"), now, None, &Outbox::default()).await.unwrap();
    assert!(recorded.photo_id > photo, "a new photo with the next id");
    assert_eq!((recorded.tree_id.as_str(), recorded.version.number), ("9", 1));
    let created = s.photo(recorded.photo_id).await.unwrap().unwrap();
    assert_eq!(created.token, recorded.token);
    assert_eq!(created.versions, vec![recorded.version.clone()]);
    assert_eq!(created.metadata.title.as_deref(), Some("From the token"));
    assert_eq!(created.metadata.tags.as_deref(), Some("a b"));
    assert_eq!(created.metadata.user_id.as_deref(), Some("17"));
    assert!(!created.metadata.publish);
    let status = s.token_status(&token, now).await.unwrap().unwrap();
    assert_eq!((status.uploads_used, status.uploads_in_flight), (1, 0));
    assert!(matches!(
        s.commit_version(&reservation, version("media/again"), now, None, &Outbox::default()).await,
        Err(CommitError::LeaseLost)
    ));
    let second = s.reserve_slot(&token, TokenKind::Upload, &new_reservation_id(), now, 60).await.unwrap();
    let other =
        s.commit_version(&second, version("media/other"), now, None, &Outbox::default()).await.unwrap();
    assert_ne!(other.photo_id, recorded.photo_id);
    assert_ne!(other.token, recorded.token, "each photo has its own secret");
    assert!(matches!(
        s.reserve_slot(&token, TokenKind::Upload, &new_reservation_id(), now, 60).await,
        Err(ReserveError::UsedUp)
    ));
}

async fn updates_reach_the_photos_made_and_the_files_to_come_case(s: &dyn StateStore) {
    let now = unix_now();
    let token = new_upload_token(s, 5, now + 600).await;
    let commit = async |file: Option<&str>| {
        let reservation =
            s.reserve_slot(&token, TokenKind::Upload, &new_reservation_id(), now, 60).await.unwrap();
        s.commit_version(&reservation, version("media/u"), now, file, &Outbox::default())
            .await
            .unwrap()
            .photo_id
    };
    let meta = async |id| s.photo(id).await.unwrap().unwrap().record.metadata;
    let first = commit(Some("file-1")).await;
    assert_eq!(
        s.update_upload_token(&token, &title("Renamed"), None, now).await.unwrap(),
        TokenUpdate::Updated
    );
    assert_eq!(meta(first).await.title.as_deref(), Some("Renamed"), "a photo already made");
    assert_eq!(meta(first).await.tags.as_deref(), Some("a b"), "fields not given are kept");
    let second = commit(None).await;
    assert_eq!(meta(second).await.title.as_deref(), Some("Renamed"), "a file to come");

    let tags = MetadataUpdate { tags: Some("own".into()), publish: Some(true), ..MetadataUpdate::default() };
    assert_eq!(
        s.update_upload_token(&token, &tags, Some("file-3"), now).await.unwrap(),
        TokenUpdate::Updated
    );
    let third = commit(Some("file-3")).await;
    let third_meta = meta(third).await;
    assert_eq!((third_meta.tags.as_deref(), third_meta.publish), (Some("own"), true), "its own metadata");
    assert_eq!(third_meta.title.as_deref(), Some("Renamed"), "the token's for the rest");
    assert_eq!(meta(second).await.tags.as_deref(), Some("a b"), "no other file changes");

    let album = MetadataUpdate { album_id: Some("7".into()), ..MetadataUpdate::default() };
    assert_eq!(
        s.update_upload_token(&token, &album, Some("file-1"), now).await.unwrap(),
        TokenUpdate::Updated
    );
    assert_eq!(meta(first).await.album_id.as_deref(), Some("7"), "the file's photo, made already");
    assert_eq!(meta(second).await.album_id, None);

    let unknown = ReplaceToken::generate();
    assert_eq!(s.update_upload_token(&unknown, &title("x"), None, now).await.unwrap(), TokenUpdate::Unknown);
    let expired = new_upload_token(s, 1, now - 1).await;
    assert_eq!(s.update_upload_token(&expired, &title("x"), None, now).await.unwrap(), TokenUpdate::Unknown);
    let photo = new_photo(s).await;
    let replace = new_token(s, photo, 1, now + 600).await;
    assert_eq!(s.update_upload_token(&replace, &title("x"), None, now).await.unwrap(), TokenUpdate::Unknown);
    assert_eq!(meta(photo).await.title.as_deref(), Some("t"), "a replace token changes nothing");
}

async fn an_upload_token_keeps_metadata_for_a_bounded_number_of_files_case(s: &dyn StateStore) {
    let now = unix_now();
    let token = new_upload_token(s, 3, now + 600).await;
    for i in 0..3 {
        let file = format!("file-{i}");
        assert_eq!(
            s.update_upload_token(&token, &title("x"), Some(&file), now).await.unwrap(),
            TokenUpdate::Updated
        );
    }
    let one_more = s.update_upload_token(&token, &title("x"), Some("one-more"), now).await.unwrap();
    assert_eq!(one_more, TokenUpdate::TooManyFiles, "no more files than uploads");
    let known = s.update_upload_token(&token, &title("y"), Some("file-0"), now).await.unwrap();
    assert_eq!(known, TokenUpdate::Updated, "a file it knows can still change");
}

async fn the_latest_change_wins_and_reaches_every_photo_of_a_file_case(s: &dyn StateStore) {
    let now = unix_now();
    let token = new_upload_token(s, 3, now + 600).await;
    let commit = async |file: &str| {
        let reservation =
            s.reserve_slot(&token, TokenKind::Upload, &new_reservation_id(), now, 60).await.unwrap();
        s.commit_version(&reservation, version("media/l"), now, Some(file), &Outbox::default())
            .await
            .unwrap()
            .photo_id
    };
    let meta = async |id| s.photo(id).await.unwrap().unwrap().record.metadata;
    let own =
        MetadataUpdate { title: Some("Own".into()), tags: Some("own".into()), ..MetadataUpdate::default() };
    assert_eq!(s.update_upload_token(&token, &own, Some("shared"), now).await.unwrap(), TokenUpdate::Updated);
    assert_eq!(
        s.update_upload_token(&token, &title("Later"), None, now).await.unwrap(),
        TokenUpdate::Updated
    );
    let first = commit("shared").await;
    let first_meta = meta(first).await;
    assert_eq!(first_meta.title.as_deref(), Some("Later"), "the later change of the title wins");
    assert_eq!(first_meta.tags.as_deref(), Some("own"), "the file's own tags stand");
    // Two visitors' files may share an identifier; an update reaches both.
    let second = commit("shared").await;
    let album = MetadataUpdate { album_id: Some("5".into()), ..MetadataUpdate::default() };
    assert_eq!(
        s.update_upload_token(&token, &album, Some("shared"), now).await.unwrap(),
        TokenUpdate::Updated
    );
    assert_eq!(meta(first).await.album_id.as_deref(), Some("5"));
    assert_eq!(meta(second).await.album_id.as_deref(), Some("5"));
}

async fn concurrent_upload_commits_make_distinct_photos_case(s: Arc<dyn StateStore>) {
    let now = unix_now();
    let token = new_upload_token(&*s, 3, now + 600).await;
    let attempts = (0..12).map(|i| {
        let (s, token) = (Arc::clone(&s), token.clone());
        tokio::spawn(async move {
            let reservation =
                s.reserve_slot(&token, TokenKind::Upload, &new_reservation_id(), now, 60).await.ok()?;
            Some(
                s.commit_version(
                    &reservation,
                    version(&format!("media/p{i}")),
                    now,
                    None,
                    &Outbox::default(),
                )
                .await
                .unwrap()
                .photo_id,
            )
        })
    });
    let mut photos: Vec<PhotoId> =
        futures_util::future::join_all(attempts).await.into_iter().filter_map(|r| r.unwrap()).collect();
    photos.sort();
    photos.dedup();
    assert_eq!(photos.len(), 3, "exactly max_uploads photos, each its own");
    assert_eq!(s.token_status(&token, now).await.unwrap().unwrap().uploads_used, 3);
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
        let key = format!("{prefix}t:{}", token.as_str());
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
        let reservation =
            store.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
        store
            .commit_version(&reservation, version("media/after-flush"), now, None, &Outbox::default())
            .await
            .unwrap();
        assert_eq!(store.token_status(&token, now).await.unwrap().unwrap().uploads_used, 1);
        assert_eq!(store.photo(photo).await.unwrap().unwrap().versions.len(), 2);
    }
}

/// A TCP relay in front of Redis that records the commands clients send.
mod counting_relay {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Everything clients sent through the relay, as raw RESP.
    #[derive(Clone, Default)]
    pub struct Sent(Arc<Mutex<Vec<u8>>>);

    impl Sent {
        /// The command names sent since the last call (RESP arrays of bulk
        /// strings, as every client sends them), in order.
        pub fn take_commands(&self) -> Vec<String> {
            let bytes = std::mem::take(&mut *self.0.lock().unwrap());
            let mut commands = Vec::new();
            let mut rest = &bytes[..];
            let line = |rest: &mut &[u8]| {
                let end = rest.windows(2).position(|w| w == b"\r\n").expect("a complete RESP line");
                let text = std::str::from_utf8(&rest[1..end]).unwrap().parse::<usize>().unwrap();
                *rest = &rest[end + 2..];
                text
            };
            while !rest.is_empty() {
                assert_eq!(rest[0], b'*', "clients send arrays");
                let parts = line(&mut rest);
                for index in 0..parts {
                    assert_eq!(rest[0], b'$', "clients send bulk strings");
                    let len = line(&mut rest);
                    if index == 0 {
                        commands.push(String::from_utf8_lossy(&rest[..len]).to_uppercase());
                    }
                    rest = &rest[len + 2..];
                }
            }
            commands
        }
    }

    /// Starts a relay to `upstream` (host:port); returns its URL and the log.
    pub async fn start(upstream: String) -> (String, Sent) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let sent = Sent::default();
        let log = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let upstream = async {
                        let mut buffer = vec![0; 64 * 1024];
                        loop {
                            let n = client_read.read(&mut buffer).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            log.0.lock().unwrap().extend_from_slice(&buffer[..n]);
                            server_write.write_all(&buffer[..n]).await?;
                        }
                    };
                    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
                    let _ = tokio::join!(upstream, downstream);
                });
            }
        });
        (url, sent)
    }
}

#[tokio::test]
async fn a_redis_redeem_costs_one_call_to_reserve_and_one_to_commit() {
    let upstream = url::Url::parse(&servers::redis_url()).unwrap();
    let upstream = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap_or(6379));
    let (url, sent) = counting_relay::start(upstream).await;
    let store = RedisStore::new(&url, &servers::unique_prefix(), Duration::from_secs(2)).unwrap();
    let now = unix_now();
    let photo = new_photo(&store).await;
    let token = new_token(&store, photo, 1, now + 600).await;
    sent.take_commands();

    // Another test flushes the server's script cache; a call that meets the
    // flush is refused (NOSCRIPT), loads its script and runs again. That
    // reload is not part of the operation, so it is taken out here.
    let calls = || {
        let mut commands = sent.take_commands();
        if let Some(load) = commands.iter().position(|c| c == "SCRIPT") {
            commands.drain(load - 1..=load);
        }
        commands
    };
    let reservation =
        store.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    assert_eq!(calls(), ["EVALSHA"], "one script call reserves the slot");
    store
        .commit_version(&reservation, version("media/one-call"), now, None, &Outbox::default())
        .await
        .unwrap();
    assert_eq!(calls(), ["EVALSHA"], "one script call commits slot and version together");
    assert_eq!(store.token_status(&token, now).await.unwrap().unwrap().uploads_used, 1);
    assert_eq!(store.photo(photo).await.unwrap().unwrap().versions.len(), 2);
}
