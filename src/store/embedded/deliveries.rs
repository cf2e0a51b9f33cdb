//! The embedded store's delivery queue, as rows (`deliveries_store.rs`
//! has its steps): one record per delivery and indexes by due time, by age
//! (pending ones), by token and by settling time (for the purge); and the
//! outcomes of each token's redeems. Every function works in a transaction
//! it is given, so a commit writes its outbox in its own.

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{
    DELIVERIES, DELIVERIES_DUE, DELIVERIES_PENDING, DELIVERIES_SETTLED, META, TOKEN_DELIVERIES, TOKEN_EVENTS,
    decode, encode, store_error,
};
use crate::domain::{ReplaceToken, unix_micros};
use crate::store::deliveries::Outbox;
use crate::store::deliveries::{Delivery, DeliveryState, EVENTS_KEPT};
use crate::store::events::Event;
use crate::store::outbox::filled;
use crate::store::{RecordedVersion, StoreError};

/// The `META` counter of dead deliveries kept.
pub(super) const DEAD: &str = "deliveries_dead";

#[derive(Serialize, Deserialize)]
pub(super) struct Record {
    pub delivery: Delivery,
    pub state: DeliveryState,
}

pub(super) fn get(txn: &WriteTransaction, id: &str) -> Result<Option<Record>, StoreError> {
    let table = txn.open_table(DELIVERIES).map_err(store_error)?;
    let bytes = table.get(id).map_err(store_error)?;
    bytes.map(|b| decode(b.value())).transpose()
}

pub(super) fn put(txn: &WriteTransaction, record: &Record) -> Result<(), StoreError> {
    let mut table = txn.open_table(DELIVERIES).map_err(store_error)?;
    table.insert(record.delivery.id.as_str(), encode(record).as_slice()).map_err(store_error)?;
    Ok(())
}

/// Moves a pending delivery's due time.
pub(super) fn set_due(
    txn: &WriteTransaction,
    id: &str,
    from: Option<u64>,
    to: u64,
) -> Result<(), StoreError> {
    let mut due = txn.open_table(DELIVERIES_DUE).map_err(store_error)?;
    if let Some(from) = from {
        due.remove((from, id)).map_err(store_error)?;
    }
    due.insert((to, id), ()).map_err(store_error)?;
    Ok(())
}

/// Queues `delivery` in `txn` (see [`DeliveryQueue::enqueue`]).
pub(super) fn enqueue_in(txn: &WriteTransaction, delivery: &Delivery, due: u64) -> Result<(), StoreError> {
    if get(txn, &delivery.id)?.is_some() {
        return Ok(());
    }
    let (id, created) = (delivery.id.as_str(), delivery.created_at);
    set_due(txn, id, None, due)?;
    txn.open_table(DELIVERIES_PENDING)
        .map_err(store_error)?
        .insert((created, id), ())
        .map_err(store_error)?;
    txn.open_table(TOKEN_DELIVERIES)
        .map_err(store_error)?
        .insert((delivery.token.as_str(), created, id), ())
        .map_err(store_error)?;
    put(txn, &Record { state: DeliveryState::Pending { due }, delivery: delivery.clone() })
}

/// Keeps `event` of `token` in `txn` (see [`DeliveryQueue::record_event`]),
/// the oldest going past the cap.
pub(super) fn record_event_in(
    txn: &WriteTransaction,
    token: &ReplaceToken,
    event: &Event,
) -> Result<(), StoreError> {
    let mut events = txn.open_table(TOKEN_EVENTS).map_err(store_error)?;
    // Ordered by when it was recorded, to the microsecond.
    let key = (token.as_str(), unix_micros(), event.event_id.as_str());
    events.insert(key, encode(event).as_slice()).map_err(store_error)?;
    let range = token_range(token);
    let kept = events.range(range.clone()).map_err(store_error)?.count();
    if kept > EVENTS_KEPT {
        let oldest: Vec<(u64, String)> = events
            .range(range)
            .map_err(store_error)?
            .take(kept - EVENTS_KEPT)
            .map(|entry| entry.map(|(key, _)| (key.value().1, key.value().2.to_owned())))
            .collect::<Result<_, _>>()
            .map_err(store_error)?;
        for (at, id) in oldest {
            events.remove((token.as_str(), at, id.as_str())).map_err(store_error)?;
        }
    }
    Ok(())
}

/// Writes a commit's outbox in its transaction, completed by `recorded`.
pub fn write_outbox(
    txn: &WriteTransaction,
    outbox: &Outbox,
    recorded: &RecordedVersion,
) -> Result<(), StoreError> {
    if let Some(event) = &outbox.event {
        let event = event.succeeded_as(recorded);
        let token = event.token.parse::<ReplaceToken>().map_err(|_| store_error("an event of no token"))?;
        record_event_in(txn, &token, &event)?;
    }
    for (delivery, due) in &outbox.deliveries {
        enqueue_in(txn, &filled(delivery, recorded), *due)?;
    }
    Ok(())
}

/// Every key of `token`'s rows in a (token, time, id) table.
pub(super) fn token_range(token: &ReplaceToken) -> std::ops::RangeInclusive<(&str, u64, &str)> {
    (token.as_str(), 0u64, "")..=(token.as_str(), u64::MAX, "\u{10ffff}")
}

/// Removes the outcomes kept of `token` (purged).
pub fn delete_events(txn: &WriteTransaction, token: &str) -> Result<(), StoreError> {
    let mut events = txn.open_table(TOKEN_EVENTS).map_err(store_error)?;
    events
        .retain_in((token, 0u64, "")..=(token, u64::MAX, "\u{10ffff}"), |_, _| false)
        .map_err(store_error)?;
    Ok(())
}

/// Removes deliveries settled before `before`; returns how many.
pub fn purge_settled(txn: &WriteTransaction, before: u64) -> Result<u64, StoreError> {
    let settled: Vec<(u64, String)> = {
        let index = txn.open_table(DELIVERIES_SETTLED).map_err(store_error)?;
        index
            .range((0u64, "")..(before, ""))
            .map_err(store_error)?
            .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
            .collect::<Result<_, _>>()
            .map_err(store_error)?
    };
    for (at, id) in &settled {
        if let Some(record) = get(txn, id)? {
            let Delivery { token, created_at, .. } = &record.delivery;
            txn.open_table(TOKEN_DELIVERIES)
                .map_err(store_error)?
                .remove((token.as_str(), *created_at, id.as_str()))
                .map_err(store_error)?;
            if matches!(record.state, DeliveryState::Dead { .. }) {
                let mut meta = txn.open_table(META).map_err(store_error)?;
                let dead = meta.get(DEAD).map_err(store_error)?.map_or(0, |v| v.value());
                meta.insert(DEAD, dead.saturating_sub(1)).map_err(store_error)?;
            }
            txn.open_table(DELIVERIES).map_err(store_error)?.remove(id.as_str()).map_err(store_error)?;
        }
        txn.open_table(DELIVERIES_SETTLED)
            .map_err(store_error)?
            .remove((*at, id.as_str()))
            .map_err(store_error)?;
    }
    Ok(settled.len() as u64)
}
