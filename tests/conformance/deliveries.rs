//! The `DeliveryQueue` contract, on the embedded store and on Redis: due
//! deliveries are leased to one taker at a time, retried when they are due
//! again, settled once, listed per token and counted; a token's outcomes
//! are kept in order, the latest of them.

use std::sync::Arc;
use std::time::Duration;

use upload_receiver::callback::{Outcome, ReturnData};
use upload_receiver::delivery::event::{Event, EventType};
use upload_receiver::delivery::queue::{
    Channel, Delivery, DeliveryQueue, DeliveryState, EVENTS_KEPT, Payload, QueueStats, Settled,
};
use upload_receiver::domain::{ReplaceToken, unix_now};
use upload_receiver::store::embedded::EmbeddedStore;
use upload_receiver::store::redis::RedisStore;
use upload_receiver::store::{CommitError, Outbox, StateStore, TokenKind, new_reservation_id};

use crate::servers;
use crate::state::{new_photo, new_token, version};

const NOW: u64 = 1_900_000_000;
const LEASE: u64 = 15;

fn delivery(token: &ReplaceToken, n: u64) -> Delivery {
    let data = ReturnData {
        domain: "videos.example.com".into(),
        token: ("replace_token".into(), token.as_str().to_owned()),
        outcome: Outcome::Stored { photo_id: n.to_string(), tree_id: "1".into(), token: "secret".into() },
        extras: vec![("session".into(), "abc".into())],
    };
    Delivery {
        id: format!("delivery-{n}-{}", ReplaceToken::generate().as_str()),
        channel: Channel::Callback,
        token: token.clone(),
        event_id: Some(format!("evt_{n}")),
        payload: Payload::Callback { return_url: "https://www.example.com/cb".into(), data },
        created_at: NOW + n,
        retry_until: NOW + 86_400,
        attempts: 0,
        last_error: None,
    }
}

/// The delivery as an attempt leaves it.
fn attempted(delivery: &Delivery) -> Delivery {
    Delivery { attempts: delivery.attempts + 1, ..delivery.clone() }
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            async fn store() -> (Arc<dyn DeliveryQueue>, Option<tempfile::TempDir>) {
                let (both, dir) = $make;
                (both.queue, dir)
            }

            #[tokio::test]
            async fn a_commit_writes_its_outbox_with_its_version_and_a_refused_one_nothing() {
                let (both, _dir) = $make;
                a_commit_writes_its_outbox_with_its_version_and_a_refused_one_nothing_case(&both).await;
            }

            #[tokio::test]
            async fn a_due_delivery_is_leased_to_one_taker_then_retried_then_settled_once() {
                let (q, _dir) = store().await;
                a_due_delivery_is_leased_to_one_taker_then_retried_then_settled_once_case(&*q).await;
            }

            #[tokio::test]
            async fn deliveries_are_listed_per_token_and_counted() {
                let (q, _dir) = store().await;
                deliveries_are_listed_per_token_and_counted_case(&*q).await;
            }

            #[tokio::test]
            async fn outcomes_are_kept_per_token_in_order_up_to_the_cap() {
                let (q, _dir) = store().await;
                outcomes_are_kept_per_token_in_order_up_to_the_cap_case(&*q).await;
            }

            #[tokio::test]
            async fn concurrent_takers_never_take_one_delivery_twice() {
                let (q, _dir) = store().await;
                concurrent_takers_never_take_one_delivery_twice_case(q).await;
            }
        }
    };
}

/// One store seen as both a state store and a delivery queue.
struct Both {
    state: Arc<dyn StateStore>,
    queue: Arc<dyn DeliveryQueue>,
}

impl Both {
    fn of<S: StateStore + DeliveryQueue + 'static>(store: S) -> Both {
        let store = Arc::new(store);
        Both { state: store.clone(), queue: store }
    }
}

conformance!(embedded, {
    let dir = tempfile::tempdir().unwrap();
    (Both::of(EmbeddedStore::open(dir.path()).unwrap()), Some(dir))
});

conformance!(redis, {
    let store =
        RedisStore::new(&servers::redis_url(), &servers::unique_prefix(), Duration::from_secs(2)).unwrap();
    (Both::of(store), None::<tempfile::TempDir>)
});

async fn a_due_delivery_is_leased_to_one_taker_then_retried_then_settled_once_case(q: &dyn DeliveryQueue) {
    let token = ReplaceToken::generate();
    let d = delivery(&token, 1);
    // Held by the request making its first attempt until NOW + 10.
    q.enqueue(&d, NOW + 10).await.unwrap();
    q.enqueue(&d, NOW).await.unwrap();
    assert!(q.take_due(NOW + 9, LEASE, 10).await.unwrap().is_empty(), "held, and queued once");
    let taken = q.take_due(NOW + 10, LEASE, 10).await.unwrap();
    assert_eq!(taken, std::slice::from_ref(&d));
    assert!(q.take_due(NOW + 10 + LEASE - 1, LEASE, 10).await.unwrap().is_empty(), "leased");
    // The taker died: the lease runs out and another takes it.
    assert_eq!(q.take_due(NOW + 10 + LEASE, LEASE, 10).await.unwrap(), std::slice::from_ref(&d));

    // A failed attempt: due again later, with its count and error.
    let once = attempted(&d);
    let retry = Settled::Retry { error: "the callback was answered 503".into(), due: NOW + 100 };
    q.settle(&once, &retry, NOW + 30).await.unwrap();
    assert!(q.take_due(NOW + 99, LEASE, 10).await.unwrap().is_empty());
    let again = q.take_due(NOW + 100, LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].attempts, again[0].last_error.as_deref()),
        (1, Some("the callback was answered 503"))
    );

    // Delivered: never taken again, and a late settle changes nothing.
    let twice = attempted(&again[0]);
    q.settle(&twice, &Settled::Delivered { status: 200 }, NOW + 101).await.unwrap();
    q.settle(&twice, &Settled::Dead { error: "late".into() }, NOW + 102).await.unwrap();
    assert!(q.take_due(NOW + 100_000, LEASE, 10).await.unwrap().is_empty());
    let listed = q.deliveries_of(&token).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, DeliveryState::Delivered { at: NOW + 101, status: 200 });
    assert_eq!((listed[0].0.attempts, listed[0].0.last_error.as_deref()), (2, None));
    assert_eq!(q.stats().await.unwrap(), QueueStats { pending: 0, oldest_pending: None, dead: 0 });
}

async fn deliveries_are_listed_per_token_and_counted_case(q: &dyn DeliveryQueue) {
    let (token, other) = (ReplaceToken::generate(), ReplaceToken::generate());
    let [a, b, c] = [delivery(&token, 1), delivery(&token, 2), delivery(&other, 3)];
    for d in [&a, &b, &c] {
        q.enqueue(d, NOW).await.unwrap();
    }
    assert_eq!(q.stats().await.unwrap(), QueueStats { pending: 3, oldest_pending: Some(NOW + 1), dead: 0 });
    q.settle(
        &attempted(&a),
        &Settled::Dead { error: "the callback host is not allowed: 10.0.0.1".into() },
        NOW + 5,
    )
    .await
    .unwrap();
    let listed = q.deliveries_of(&token).await.unwrap();
    let states: Vec<_> = listed.iter().map(|(d, state)| (d.id.clone(), state.clone())).collect();
    assert_eq!(
        states,
        [
            (a.id.clone(), DeliveryState::Dead { at: NOW + 5 }),
            (b.id.clone(), DeliveryState::Pending { due: NOW })
        ]
    );
    assert_eq!(listed[0].0.last_error.as_deref(), Some("the callback host is not allowed: 10.0.0.1"));
    assert_eq!(q.deliveries_of(&other).await.unwrap().len(), 1);
    assert_eq!(q.stats().await.unwrap(), QueueStats { pending: 2, oldest_pending: Some(NOW + 2), dead: 1 });
}

async fn concurrent_takers_never_take_one_delivery_twice_case(q: Arc<dyn DeliveryQueue>) {
    let token = ReplaceToken::generate();
    for n in 0..40 {
        q.enqueue(&delivery(&token, n), NOW).await.unwrap();
    }
    let takers = (0..8).map(|_| {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.take_due(NOW, LEASE, 7).await.unwrap() })
    });
    let mut ids: Vec<String> = Vec::new();
    for taker in takers {
        ids.extend(taker.await.unwrap().into_iter().map(|d| d.id));
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((count, ids.len()), (40, 40), "every delivery taken, each once");
}

fn event(token: &ReplaceToken, n: u64) -> Event {
    Event {
        event_id: format!("evt_{n:06}"),
        kind: if n % 2 == 0 { EventType::Succeeded } else { EventType::Failed },
        occurred_at: NOW + n,
        token_kind: "replace".into(),
        token: token.as_str().to_owned(),
        photo_id: Some("7".into()),
        tree_id: None,
        version: None,
        error_message: (n % 2 == 1).then(|| format!("failure {n}")),
    }
}

async fn outcomes_are_kept_per_token_in_order_up_to_the_cap_case(q: &dyn DeliveryQueue) {
    let (token, other) = (ReplaceToken::generate(), ReplaceToken::generate());
    for n in [2, 0, 1] {
        q.record_event(&token, &event(&token, n)).await.unwrap();
    }
    q.record_event(&other, &event(&other, 5)).await.unwrap();
    let kept = q.events_of(&token).await.unwrap();
    assert_eq!(kept, [event(&token, 2), event(&token, 0), event(&token, 1)], "in the order recorded, whole");
    assert_eq!(q.events_of(&other).await.unwrap().len(), 1);
    // Past the cap, the oldest go.
    let many = ReplaceToken::generate();
    for n in 0..(EVENTS_KEPT as u64 + 5) {
        q.record_event(&many, &event(&many, n)).await.unwrap();
    }
    let kept = q.events_of(&many).await.unwrap();
    assert_eq!(kept.len(), EVENTS_KEPT);
    assert_eq!(kept[0], event(&many, 5));
}

async fn a_commit_writes_its_outbox_with_its_version_and_a_refused_one_nothing_case(both: &Both) {
    let (state, queue) = (&*both.state, &*both.queue);
    let now = unix_now();
    let photo = new_photo(state).await;
    let token = new_token(state, photo, 2, now + 600).await;
    let reservation =
        state.reserve_slot(&token, TokenKind::Replace, &new_reservation_id(), now, 60).await.unwrap();
    // As the redeem builds it: what only the commit knows is left out.
    let event = Event::success_of(&reservation.grant, now);
    let mut webhook = delivery(&token, 1);
    webhook.channel = Channel::Webhook;
    webhook.payload = Payload::Webhook { url: "https://hooks.example.com/e".into(), event: event.clone() };
    let mut callback = delivery(&token, 2);
    if let Payload::Callback { data, .. } = &mut callback.payload {
        data.outcome =
            Outcome::Stored { photo_id: String::new(), tree_id: String::new(), token: String::new() };
    }
    let outbox =
        Outbox { event: Some(event.clone()), deliveries: vec![(webhook, now), (callback, now + 100)] };
    let recorded =
        state.commit_version(&reservation, version("media/boxed"), now, None, &outbox).await.unwrap();

    // Written with the commit, completed by its version.
    let events = queue.events_of(&token).await.unwrap();
    assert_eq!(events, [event.succeeded_as(&recorded)]);
    assert_eq!(events[0].version.as_ref().map(|v| v.number), Some(2));
    assert_eq!(events[0].photo_id, Some(photo.to_string()));
    let due = queue.take_due(now, LEASE, 10).await.unwrap();
    assert_eq!(due.len(), 1, "the webhook is due, the callback held: {due:?}");
    let Payload::Webhook { event: sent, .. } = &due[0].payload else { panic!("{due:?}") };
    assert_eq!(sent, &events[0]);
    let listed = queue.deliveries_of(&token).await.unwrap();
    let callback = listed.iter().find(|(d, _)| d.channel == Channel::Callback).expect("the callback");
    let Payload::Callback { data, .. } = &callback.0.payload else { panic!() };
    let stored = Outcome::Stored {
        photo_id: photo.to_string(),
        tree_id: recorded.tree_id.clone(),
        token: recorded.token.as_str().to_owned(),
    };
    assert_eq!((&data.outcome, &callback.1), (&stored, &DeliveryState::Pending { due: now + 100 }));

    // A commit refused (its slot gone) writes none of its outbox.
    let mut again = outbox.clone();
    again.event = Some(Event::success_of(&reservation.grant, now));
    again.deliveries.iter_mut().for_each(|(d, _)| d.id.push_str("-again"));
    let refused = state.commit_version(&reservation, version("media/again"), now, None, &again).await;
    assert!(matches!(refused, Err(CommitError::LeaseLost)), "{refused:?}");
    assert_eq!(queue.events_of(&token).await.unwrap().len(), 1);
    assert_eq!(queue.deliveries_of(&token).await.unwrap().len(), 2);
}
