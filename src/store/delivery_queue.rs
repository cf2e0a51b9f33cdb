//! The `DeliveryQueue` seam (its data in `deliveries.rs`), implemented by
//! both state stores.

use async_trait::async_trait;

use super::StoreError;
use super::deliveries::{Delivery, DeliveryState, QueueStats, Settled};
use super::events::Event;
use crate::domain::ReplaceToken;

#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Keeps `delivery` pending, due at `due`. Its first attempt is usually
    /// made at once by the request that queued it, which holds it until
    /// `due` so no other instance makes it meanwhile.
    async fn enqueue(&self, delivery: &Delivery, due: u64) -> Result<(), StoreError>;

    /// Leases up to `max` deliveries due at `now` (oldest due first) until
    /// `now + lease_secs`, and returns them.
    async fn take_due(&self, now: u64, lease_secs: u64, max: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Records how an attempt at `delivery` (as taken, its `attempts`
    /// counting this one) ended at `now`. A delivery no longer pending is
    /// left as it is.
    async fn settle(&self, delivery: &Delivery, settled: &Settled, now: u64) -> Result<(), StoreError>;

    /// The deliveries about `token`'s redeems, oldest first, with their state.
    async fn deliveries_of(&self, token: &ReplaceToken)
    -> Result<Vec<(Delivery, DeliveryState)>, StoreError>;

    async fn stats(&self) -> Result<QueueStats, StoreError>;

    /// Keeps `event`, an outcome of a redeem of `token`, for the token's
    /// status (the latest [`EVENTS_KEPT`](super::deliveries::EVENTS_KEPT) per token, as long as the token).
    async fn record_event(&self, token: &ReplaceToken, event: &Event) -> Result<(), StoreError>;

    /// The outcomes kept of `token`'s redeems, oldest first.
    async fn events_of(&self, token: &ReplaceToken) -> Result<Vec<Event>, StoreError>;
}
