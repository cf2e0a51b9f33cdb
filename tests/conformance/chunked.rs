//! The `ChunkedFiles` contract (files sent in chunks), checked against each
//! state store.

use std::sync::Arc;
use std::time::Duration;

use upload_receiver::domain::{ReplaceToken, unix_now};
use upload_receiver::storage::chunked::{ChunkReceipt, ChunkedObject, PartReceipt, Sizing};
use upload_receiver::store::chunked::{
    Begun, Cancellation, ChunkedFiles, ChunkedTerms, FileId, Recorded, Stage, StoredChunk,
};
use upload_receiver::store::embedded::EmbeddedStore;
use upload_receiver::store::redis::RedisStore;
use upload_receiver::store::{CommitError, Outbox, ReserveError, StateStore, TokenKind};

use crate::servers;
use crate::state::{new_photo, new_token, version};

/// A state store and its chunked files (the same store, seen as both).
#[derive(Clone)]
struct Store {
    state: Arc<dyn StateStore>,
    files: Arc<dyn ChunkedFiles>,
}

impl Store {
    fn of<S: StateStore + ChunkedFiles>(store: S) -> Store {
        let store = Arc::new(store);
        Store { state: store.clone(), files: store }
    }

    fn chunked(&self) -> &dyn ChunkedFiles {
        &*self.files
    }
}

impl std::ops::Deref for Store {
    type Target = dyn StateStore;

    fn deref(&self) -> &Self::Target {
        &*self.state
    }
}

const LEASE: u64 = 600;
const CLAIM: u64 = 30;

fn terms(total_size: u64, chunk_size: u64, chunks_per_part: u64) -> ChunkedTerms {
    ChunkedTerms {
        object: ChunkedObject {
            key: format!("media/{}-c", ReplaceToken::generate().as_str()),
            total_size,
            chunk_size,
            chunks_per_part,
            upload_id: None,
            content_type: None,
        },
        filename: "clip.mp4".into(),
        declared_type: "video/mp4".into(),
    }
}

fn chunk(number: u64, size: u64) -> StoredChunk {
    StoredChunk {
        number,
        receipt: Some(ChunkReceipt { size, crc64: number, etag: Some(format!("etag-{number}")) }),
        sizing: None,
        media_type: (number == 1).then(|| "video/mp4".to_owned()),
    }
}

fn file_of(token: &ReplaceToken, identifier: &str) -> FileId {
    FileId { token: token.clone(), identifier: identifier.into() }
}

async fn replace_token(s: &Store, max_uploads: u32) -> ReplaceToken {
    let photo = new_photo(&*s.state).await;
    new_token(&*s.state, photo, max_uploads, unix_now() + 600).await
}

async fn began(s: &Store, id: &FileId, terms: &ChunkedTerms, now: u64) -> Begun {
    s.chunked().begin(id, TokenKind::Replace, terms, 1, now, LEASE).await.unwrap()
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            async fn store() -> (Store, Option<tempfile::TempDir>) {
                $make
            }

            #[tokio::test]
            async fn a_file_takes_one_slot_whatever_its_chunks() {
                let (s, _dir) = store().await;
                a_file_takes_one_slot_whatever_its_chunks_case(&s).await;
            }

            #[tokio::test]
            async fn chunks_in_any_order_complete_the_file_once() {
                let (s, _dir) = store().await;
                chunks_in_any_order_complete_the_file_once_case(&s).await;
            }

            #[tokio::test]
            async fn the_last_two_chunks_at_once_make_one_completer() {
                let (s, _dir) = store().await;
                the_last_two_chunks_at_once_make_one_completer_case(s).await;
            }

            #[tokio::test]
            async fn a_chunk_recorded_while_the_rest_arrive_is_told_so() {
                let (s, _dir) = store().await;
                a_chunk_recorded_while_the_rest_arrive_is_told_so_case(&s).await;
            }

            #[tokio::test]
            async fn a_chunk_of_the_other_sizing_is_refused() {
                let (s, _dir) = store().await;
                a_chunk_of_the_other_sizing_is_refused_case(&s).await;
            }

            #[tokio::test]
            async fn small_chunks_are_grouped_into_parts() {
                let (s, _dir) = store().await;
                small_chunks_are_grouped_into_parts_case(&s).await;
            }

            #[tokio::test]
            async fn a_cancelled_file_gives_its_slot_back_and_stays_cancelled() {
                let (s, _dir) = store().await;
                a_cancelled_file_gives_its_slot_back_and_stays_cancelled_case(&s).await;
            }

            #[tokio::test]
            async fn an_abandoned_file_frees_its_slot_and_its_object() {
                let (s, _dir) = store().await;
                an_abandoned_file_frees_its_slot_and_its_object_case(&s).await;
            }
        }
    };
}

conformance!(embedded, {
    let dir = tempfile::tempdir().unwrap();
    (Store::of(EmbeddedStore::open(dir.path()).unwrap()), Some(dir))
});

conformance!(redis, {
    let store =
        RedisStore::new(&servers::redis_url(), &servers::unique_prefix(), Duration::from_secs(2)).unwrap();
    (Store::of(store), None)
});

async fn a_file_takes_one_slot_whatever_its_chunks_case(s: &Store) {
    let now = unix_now();
    let token = replace_token(s, 1).await;
    let id = file_of(&token, "3145728-clip.mp4");
    let first = terms(3 << 20, 1 << 20, 1);
    let Begun::Began(file) = began(s, &id, &first, now).await else { panic!("a new file") };
    assert_eq!((file.terms, file.stage, file.chunks_stored), (first.clone(), Stage::Receiving, 0));
    // Another chunk's begin joins it: the first terms stand.
    let Begun::Joined(joined) = began(s, &id, &terms(3 << 20, 1 << 20, 1), now).await else {
        panic!("joined")
    };
    assert_eq!(joined.terms, first);
    assert_eq!(s.token_status(&token, now).await.unwrap().unwrap().uploads_in_flight, 1);
    // The one slot is taken: another file of the token is refused...
    let other = s.chunked().begin(&file_of(&token, "other"), TokenKind::Replace, &first, 1, now, LEASE).await;
    assert!(matches!(other, Err(ReserveError::UsedUp)), "{other:?}");
    // ...and so is the token by the other kind's redeem, and an unknown one.
    let wrong_kind = s.chunked().begin(&file_of(&token, "x"), TokenKind::Upload, &first, 1, now, LEASE).await;
    assert!(matches!(wrong_kind, Err(ReserveError::Unknown)), "{wrong_kind:?}");
    let stranger = file_of(&ReplaceToken::generate(), "x");
    let unknown = s.chunked().begin(&stranger, TokenKind::Replace, &first, 1, now, LEASE).await;
    assert!(matches!(unknown, Err(ReserveError::Unknown)));
    // The same identifier under another token is another file.
    let token_b = replace_token(s, 1).await;
    assert!(matches!(began(s, &file_of(&token_b, "3145728-clip.mp4"), &first, now).await, Begun::Began(_)));
}

async fn chunks_in_any_order_complete_the_file_once_case(s: &Store) {
    let now = unix_now();
    let token = replace_token(s, 1).await;
    let id = file_of(&token, "f");
    let Begun::Began(file) = began(s, &id, &terms(3 << 20, 1 << 20, 1), now).await else { panic!() };
    let chunks = s.chunked();
    for number in [3, 1] {
        let recorded = chunks.record_chunk(&id, &chunk(number, 1 << 20), now, LEASE, CLAIM).await.unwrap();
        assert_eq!(recorded, Recorded::Stored { duplicate: false }, "chunk {number}");
    }
    let again = chunks.record_chunk(&id, &chunk(3, 1 << 20), now, LEASE, CLAIM).await.unwrap();
    assert_eq!(again, Recorded::Stored { duplicate: true });
    // Sent again and not stored again: its receipt stands.
    let unstored = StoredChunk { receipt: None, ..chunk(3, 1 << 20) };
    let recorded = chunks.record_chunk(&id, &unstored, now, LEASE, CLAIM).await.unwrap();
    assert_eq!(recorded, Recorded::Stored { duplicate: true });
    let never_stored = StoredChunk { receipt: None, ..chunk(2, 1 << 20) };
    assert_eq!(chunks.record_chunk(&id, &never_stored, now, LEASE, CLAIM).await.unwrap(), Recorded::Gone);
    let view = chunks.file(&id, 3, now).await.unwrap().unwrap();
    assert_eq!(
        (view.chunks_stored, view.has_chunk, view.media_type.as_deref()),
        (2, true, Some("video/mp4"))
    );
    assert!(!chunks.file(&id, 2, now).await.unwrap().unwrap().has_chunk);
    // The sizing is unknown (3 MiB is a multiple of 1 MiB: both agree).
    let mut last = chunk(2, 1 << 20);
    last.sizing = Some(Sizing::Floor);
    let Recorded::FileReady(ready) = chunks.record_chunk(&id, &last, now, LEASE, CLAIM).await.unwrap() else {
        panic!("the last missing chunk completes the file")
    };
    assert_eq!(ready.chunks.iter().map(|c| c.crc64).collect::<Vec<_>>(), [1, 2, 3], "in order");
    let etags: Vec<_> = ready.parts.iter().map(|p| (p.number, p.etag.clone().unwrap())).collect();
    assert_eq!(etags, [(1, "etag-1".into()), (2, "etag-2".into()), (3, "etag-3".into())]);
    assert_eq!(ready.media_type.as_deref(), Some("video/mp4"));
    // While the completion is claimed, a copy of a chunk waits; a claim
    // given up (its work failed) passes on at once.
    let first = chunk(1, 1 << 20);
    let copy = || chunks.record_chunk(&id, &first, now, LEASE, CLAIM);
    assert_eq!(copy().await.unwrap(), Recorded::Busy);
    chunks.release_claim(&id, None).await.unwrap();
    assert!(matches!(copy().await.unwrap(), Recorded::FileReady(_)));
    assert_eq!(copy().await.unwrap(), Recorded::Busy);
    // A claim that ran out (its holder died) passes to the next copy.
    let later = now + CLAIM + 1;
    assert!(matches!(
        chunks.record_chunk(&id, &chunk(1, 1 << 20), later, LEASE, CLAIM).await.unwrap(),
        Recorded::FileReady(_)
    ));

    let recorded = chunks
        .complete(&id, &file.reservation, version("media/whole-c"), later, LEASE, &Outbox::default())
        .await
        .unwrap();
    assert_eq!(recorded.version.number, 2);
    // Every later chunk, and a second completion, get the same outcome.
    let replay = chunks.record_chunk(&id, &chunk(2, 1 << 20), later, LEASE, CLAIM).await.unwrap();
    assert_eq!(replay, Recorded::Completed(recorded.clone()));
    assert_eq!(chunks.file(&id, 2, later).await.unwrap().unwrap().stage, Stage::Completed(recorded.clone()));
    let twice = chunks
        .complete(&id, &file.reservation, version("media/whole-c"), later, LEASE, &Outbox::default())
        .await;
    assert!(matches!(twice, Err(CommitError::LeaseLost)), "{twice:?}");
    let status = s.token_status(&token, later).await.unwrap().unwrap();
    assert_eq!((status.uploads_used, status.uploads_in_flight), (1, 0));
    assert_eq!(s.photo(recorded.photo_id).await.unwrap().unwrap().versions.len(), 2);
    assert!(
        matches!(began(s, &id, &terms(3 << 20, 1 << 20, 1), later).await, Begun::Joined(f) if f.stage == Stage::Completed(recorded))
    );
}

async fn the_last_two_chunks_at_once_make_one_completer_case(s: Store) {
    for round in 0..20 {
        let now = unix_now();
        let token = replace_token(&s, 1).await;
        let id = file_of(&token, &format!("race-{round}"));
        began(&s, &id, &terms(4 << 20, 1 << 20, 1), now).await;
        for number in [1, 2] {
            s.chunked().record_chunk(&id, &chunk(number, 1 << 20), now, LEASE, CLAIM).await.unwrap();
        }
        let racers = [3, 4].map(|number| {
            let (s, id) = (s.clone(), id.clone());
            tokio::spawn(async move {
                let mut last = chunk(number, 1 << 20);
                last.sizing = Some(Sizing::Ceil);
                s.chunked().record_chunk(&id, &last, now, LEASE, CLAIM).await.unwrap()
            })
        });
        let mut ready = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Recorded::FileReady(file) => {
                    assert_eq!(file.chunks.len(), 4);
                    ready += 1;
                }
                other => assert_eq!(other, Recorded::Stored { duplicate: false }),
            }
        }
        assert_eq!(ready, 1, "exactly one request completes the file (round {round})");
    }
}

async fn a_chunk_of_the_other_sizing_is_refused_case(s: &Store) {
    let now = unix_now();
    let token = replace_token(s, 1).await;
    let id = file_of(&token, "sized");
    // 3.5 MiB: floor has 3 chunks (the last 1.5 MiB), ceil 4.
    let total = 3 * (1 << 20) + (1 << 19);
    began(s, &id, &terms(total, 1 << 20, 1), now).await;
    let mut ceil_third = chunk(3, 1 << 20);
    ceil_third.sizing = Some(Sizing::Ceil);
    assert_eq!(
        s.chunked().record_chunk(&id, &ceil_third, now, LEASE, CLAIM).await.unwrap(),
        Recorded::Stored { duplicate: false }
    );
    let mut floor_last = chunk(3, (1 << 20) + (1 << 19));
    floor_last.sizing = Some(Sizing::Floor);
    assert_eq!(
        s.chunked().record_chunk(&id, &floor_last, now, LEASE, CLAIM).await.unwrap(),
        Recorded::SizingConflict
    );
    let view = s.chunked().file(&id, 3, now).await.unwrap().unwrap();
    assert_eq!((view.sizing, view.chunks_stored), (Some(Sizing::Ceil), 1), "nothing else changed");
}

async fn small_chunks_are_grouped_into_parts_case(s: &Store) {
    let now = unix_now();
    let token = replace_token(s, 1).await;
    let id = file_of(&token, "grouped");
    // 7 chunks of 1 MiB in parts of 3: parts 1-3, 4-6, 7.
    began(s, &id, &terms(7 << 20, 1 << 20, 3), now).await;
    let chunks = s.chunked();
    for number in [2, 7, 1, 4, 5] {
        let recorded = record_grouped(s, &id, number, now).await;
        let expected = if number == 7 {
            // The last part's only chunk, once the sizing says it is the last.
            Recorded::PartReady { part: 3, chunks: vec![(7, chunk(7, 1 << 20).receipt.unwrap())] }
        } else {
            Recorded::Stored { duplicate: false }
        };
        assert_eq!(recorded, expected, "chunk {number}");
    }
    let Recorded::PartReady { part: 1, chunks: members } = record_grouped(s, &id, 3, now).await else {
        panic!("part 1 is whole")
    };
    assert_eq!(members.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(record_grouped(s, &id, 3, now).await, Recorded::Busy, "its part is being made");
    let part = |number: u64| PartReceipt { number, etag: Some(format!("part-{number}")) };
    assert_eq!(
        chunks.record_part(&id, &part(1), now, LEASE, CLAIM).await.unwrap(),
        Recorded::Stored { duplicate: false }
    );
    assert_eq!(
        chunks.record_part(&id, &part(3), now, LEASE, CLAIM).await.unwrap(),
        Recorded::Stored { duplicate: false }
    );
    let Recorded::PartReady { part: 2, .. } = record_grouped(s, &id, 6, now).await else {
        panic!("part 2 is whole")
    };
    let Recorded::FileReady(ready) = chunks.record_part(&id, &part(2), now, LEASE, CLAIM).await.unwrap()
    else {
        panic!("the last part completes the file")
    };
    assert_eq!(ready.parts, [part(1), part(2), part(3)]);
    assert_eq!(ready.chunks.len(), 7);
}

async fn a_chunk_recorded_while_the_rest_arrive_is_told_so_case(s: &Store) {
    let now = unix_now();
    let token = replace_token(s, 2).await;
    let files = s.chunked();
    // Four chunks; 3 and 4 are on their way when 1 and 2 are recorded.
    let id = file_of(&token, "arriving");
    began(s, &id, &terms(4 << 20, 1 << 20, 1), now).await;
    for number in [1, 3, 4] {
        files.arriving(&id, number, now + CLAIM).await.unwrap();
    }
    let stored = Recorded::Stored { duplicate: false };
    assert_eq!(
        files.record_chunk(&id, &chunk(1, 1 << 20), now, LEASE, CLAIM).await.unwrap(),
        stored,
        "2 is not arriving"
    );
    files.arriving(&id, 2, now + CLAIM).await.unwrap();
    let arriving = Recorded::Arriving { duplicate: false };
    assert_eq!(files.record_chunk(&id, &chunk(2, 1 << 20), now, LEASE, CLAIM).await.unwrap(), arriving);
    assert_eq!(files.record_chunk(&id, &chunk(3, 1 << 20), now, LEASE, CLAIM).await.unwrap(), arriving);
    assert!(matches!(
        files.record_chunk(&id, &chunk(4, 1 << 20), now, LEASE, CLAIM).await.unwrap(),
        Recorded::FileReady(_)
    ));

    // A hint that ran out counts for nothing.
    let id = file_of(&token, "late");
    began(s, &id, &terms(2 << 20, 1 << 20, 1), now).await;
    files.arriving(&id, 2, now + 1).await.unwrap();
    let later = now + 2;
    assert_eq!(files.record_chunk(&id, &chunk(1, 1 << 20), later, LEASE, CLAIM).await.unwrap(), stored);
}

/// Records chunk `number` of the 7-chunk file, the last one pinning the sizing.
async fn record_grouped(s: &Store, id: &FileId, number: u64, now: u64) -> Recorded {
    let mut c = chunk(number, 1 << 20);
    c.sizing = (number == 7).then_some(Sizing::Floor);
    s.chunked().record_chunk(id, &c, now, LEASE, CLAIM).await.unwrap()
}

async fn a_cancelled_file_gives_its_slot_back_and_stays_cancelled_case(s: &Store) {
    let now = unix_now();
    let token = replace_token(s, 1).await;
    // Refused (its type) or failed (its completion): each stays as it ended.
    let endings = [
        Cancellation::Refused("not an accepted kind of file".into()),
        Cancellation::Failed("The photo no longer exists.".into()),
    ];
    for (n, why) in endings.iter().enumerate() {
        let id = file_of(&token, &format!("ended-{n}"));
        let Begun::Began(file) = began(s, &id, &terms(3 << 20, 1 << 20, 1), now).await else { panic!() };
        s.chunked().record_chunk(&id, &chunk(2, 1 << 20), now, LEASE, CLAIM).await.unwrap();
        assert!(s.chunked().is_live(&file.terms.object.key, now).await.unwrap());
        s.chunked().cancel(&id, why, now, LEASE).await.unwrap();
        assert!(!s.chunked().is_live(&file.terms.object.key, now).await.unwrap());
        assert_eq!(s.token_status(&token, now).await.unwrap().unwrap().uploads_in_flight, 0);
        assert_eq!(
            s.chunked().record_chunk(&id, &chunk(3, 1 << 20), now, LEASE, CLAIM).await.unwrap(),
            Recorded::Cancelled(why.clone())
        );
        let Begun::Joined(again) = began(s, &id, &terms(3 << 20, 1 << 20, 1), now).await else { panic!() };
        assert_eq!(again.stage, Stage::Cancelled(why.clone()));
        assert_eq!(
            s.chunked().file(&id, 2, now).await.unwrap().unwrap().stage,
            Stage::Cancelled(why.clone())
        );
    }
    // The slot is free for another file.
    assert!(matches!(began(s, &file_of(&token, "next"), &terms(10, 5, 1), now).await, Begun::Began(_)));
}

async fn an_abandoned_file_frees_its_slot_and_its_object_case(s: &Store) {
    let now = unix_now();
    let token = replace_token(s, 2).await;
    let id = file_of(&token, "left");
    let Begun::Began(file) =
        s.chunked().begin(&id, TokenKind::Replace, &terms(3 << 20, 1 << 20, 1), 1, now, 2).await.unwrap()
    else {
        panic!()
    };
    s.chunked().record_chunk(&id, &chunk(1, 1 << 20), now, 2, CLAIM).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let later = unix_now();
    assert!(
        !s.chunked().is_live(&file.terms.object.key, later).await.unwrap(),
        "the sweep may take its bytes"
    );
    assert_eq!(s.chunked().file(&id, 1, later).await.unwrap(), None);
    assert_eq!(
        s.chunked().record_chunk(&id, &chunk(2, 1 << 20), later, 2, CLAIM).await.unwrap(),
        Recorded::Gone
    );
    assert_eq!(s.token_status(&token, later).await.unwrap().unwrap().uploads_in_flight, 0);
    // Taken once for its event, whoever asks first; files still received are not.
    let other = file_of(&token, "other");
    let _ = s.chunked().begin(&other, TokenKind::Replace, &terms(3 << 20, 1 << 20, 1), 1, later, 60).await;
    let abandoned = s.chunked().take_abandoned(later, 10).await.unwrap();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert_eq!((abandoned[0].identifier.as_str(), abandoned[0].chunks_received), ("left", 1));
    assert_eq!((abandoned[0].grant.token.clone(), abandoned[0].total_size), (token.clone(), 3 << 20));
    assert!(s.chunked().take_abandoned(later + 1, 10).await.unwrap().is_empty(), "once");
    // Its later chunks are told so; its chunk 1 begins it anew, with a new slot.
    let two = s.chunked().begin(&id, TokenKind::Replace, &terms(3 << 20, 1 << 20, 1), 2, later, 2).await;
    assert!(matches!(two, Ok(Begun::Abandoned)), "{two:?}");
    let Begun::Began(anew) = began(s, &id, &terms(3 << 20, 1 << 20, 1), later).await else {
        panic!("begun anew")
    };
    assert_eq!(anew.chunks_stored, 0);
    assert_ne!(anew.reservation.id, file.reservation.id);
}
