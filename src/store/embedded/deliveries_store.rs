//! The embedded store's `DeliveryQueue`: each step one transaction over
//! the rows of `deliveries.rs`.

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};

use super::EmbeddedStore;
use super::deliveries::{DEAD, Record, enqueue_in, get, put, record_event_in, set_due, token_range};
use super::tables::{
    DELIVERIES, DELIVERIES_DUE, DELIVERIES_PENDING, DELIVERIES_SETTLED, META, TOKEN_DELIVERIES, TOKEN_EVENTS,
    decode, store_error,
};
use crate::domain::ReplaceToken;
use crate::store::StoreError;
use crate::store::deliveries::{Delivery, DeliveryState, QueueStats, Settled};
use crate::store::delivery_queue::DeliveryQueue;
use crate::store::events::Event;

#[async_trait]
impl DeliveryQueue for EmbeddedStore {
    async fn enqueue(&self, delivery: &Delivery, due: u64) -> Result<(), StoreError> {
        let delivery = delivery.clone();
        self.write(move |txn| enqueue_in(txn, &delivery, due)).await
    }

    async fn take_due(&self, now: u64, lease_secs: u64, max: usize) -> Result<Vec<Delivery>, StoreError> {
        self.write(move |txn| {
            let due: Vec<(u64, String)> = {
                let table = txn.open_table(DELIVERIES_DUE).map_err(store_error)?;
                let range = table.range((0u64, "")..(now + 1, "")).map_err(store_error)?;
                range
                    .take(max)
                    .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
                    .collect::<Result<_, _>>()
                    .map_err(store_error)?
            };
            let mut taken = Vec::new();
            for (at, id) in due {
                // One record that does not decode (a newer release's) is left
                // out, not the batch (nor the commits it shares a write with).
                let mut record = match get(txn, &id) {
                    Ok(Some(record)) => record,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, delivery = %id, "a delivery that does not decode is left out");
                        continue;
                    }
                };
                let until = now + lease_secs;
                set_due(txn, &id, Some(at), until)?;
                record.state = DeliveryState::Pending { due: until };
                put(txn, &record)?;
                taken.push(record.delivery);
            }
            Ok(taken)
        })
        .await
    }

    async fn settle(&self, delivery: &Delivery, settled: &Settled, now: u64) -> Result<(), StoreError> {
        let (delivery, settled) = (delivery.clone(), settled.clone());
        self.write(move |txn| {
            let Some(record) = get(txn, &delivery.id)? else { return Ok(()) };
            let DeliveryState::Pending { due } = record.state else { return Ok(()) };
            let id = delivery.id.as_str();
            let mut delivery = delivery.clone();
            let state = match &settled {
                Settled::Delivered { status } => {
                    delivery.last_error = None;
                    DeliveryState::Delivered { at: now, status: *status }
                }
                Settled::Retry { error, due: next } => {
                    delivery.last_error = Some(error.clone());
                    set_due(txn, id, Some(due), *next)?;
                    return put(txn, &Record { delivery, state: DeliveryState::Pending { due: *next } });
                }
                Settled::Dead { error } => {
                    delivery.last_error = Some(error.clone());
                    let mut meta = txn.open_table(META).map_err(store_error)?;
                    let dead = meta.get(DEAD).map_err(store_error)?.map_or(0, |v| v.value());
                    meta.insert(DEAD, dead + 1).map_err(store_error)?;
                    DeliveryState::Dead { at: now }
                }
            };
            txn.open_table(DELIVERIES_DUE).map_err(store_error)?.remove((due, id)).map_err(store_error)?;
            txn.open_table(DELIVERIES_PENDING)
                .map_err(store_error)?
                .remove((delivery.created_at, id))
                .map_err(store_error)?;
            txn.open_table(DELIVERIES_SETTLED)
                .map_err(store_error)?
                .insert((now, id), ())
                .map_err(store_error)?;
            put(txn, &Record { delivery: delivery.clone(), state })
        })
        .await
    }

    async fn deliveries_of(
        &self,
        token: &ReplaceToken,
    ) -> Result<Vec<(Delivery, DeliveryState)>, StoreError> {
        let token = token.clone();
        self.read(move |txn| {
            let index = txn.open_table(TOKEN_DELIVERIES).map_err(store_error)?;
            let records = txn.open_table(DELIVERIES).map_err(store_error)?;
            let mut found = Vec::new();
            for entry in index.range(token_range(&token)).map_err(store_error)? {
                let (key, _) = entry.map_err(store_error)?;
                if let Some(bytes) = records.get(key.value().2).map_err(store_error)? {
                    let record: Record = decode(bytes.value())?;
                    found.push((record.delivery, record.state));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn record_event(&self, token: &ReplaceToken, event: &Event) -> Result<(), StoreError> {
        let (token, event) = (token.clone(), event.clone());
        self.write(move |txn| record_event_in(txn, &token, &event)).await
    }

    async fn events_of(&self, token: &ReplaceToken) -> Result<Vec<Event>, StoreError> {
        let token = token.clone();
        self.read(move |txn| {
            let events = txn.open_table(TOKEN_EVENTS).map_err(store_error)?;
            let range = events.range(token_range(&token)).map_err(store_error)?;
            range.map(|entry| decode(entry.map_err(store_error)?.1.value())).collect()
        })
        .await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.read(|txn| {
            let pending = txn.open_table(DELIVERIES_PENDING).map_err(store_error)?;
            let oldest = pending.first().map_err(store_error)?.map(|(key, _)| key.value().0);
            let dead = txn
                .open_table(META)
                .map_err(store_error)?
                .get(DEAD)
                .map_err(store_error)?
                .map_or(0, |v| v.value());
            Ok(QueueStats { pending: pending.len().map_err(store_error)?, oldest_pending: oldest, dead })
        })
        .await
    }
}
