//! The Redis store's [`DeliveryQueue`]: every step one call of
//! `lua/deliveries.lua` (see it for the keys).

use async_trait::async_trait;

use super::{RedisStore, decode, encode, store_error};
use crate::domain::{ReplaceToken, unix_micros, unix_now};
use crate::store::deliveries::{
    Delivery, DeliveryState, EVENTS_KEPT, QueueStats, SETTLED_RETENTION_SECS, Settled,
};
use crate::store::delivery_queue::DeliveryQueue;
use crate::store::events::Event;
use crate::store::outbox::{KeptWithCommit, filled};
use crate::store::{EXPIRED_TOKEN_RETENTION_SECS, StoreError};

impl RedisStore {
    async fn delivery_step<T: redis::FromRedisValue + Send>(
        &self,
        step: &str,
        now: u64,
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut all = vec![step.to_owned(), now.to_string(), self.keys.prefix.clone()];
        all.extend_from_slice(args);
        self.run(&self.scripts.deliveries, &[], &all).await
    }
}

#[async_trait]
impl DeliveryQueue for RedisStore {
    async fn enqueue(&self, delivery: &Delivery, due: u64) -> Result<(), StoreError> {
        // Kept while it may be retried, and as long as an expired token
        // after that; settling shortens it.
        let keep_until = due.max(delivery.retry_until) + SETTLED_RETENTION_SECS;
        let args = [
            delivery.id.clone(),
            encode(delivery),
            due.to_string(),
            delivery.created_at.to_string(),
            delivery.token.as_str().to_owned(),
            keep_until.to_string(),
        ];
        let _: i64 = self.delivery_step("enqueue", unix_now(), &args).await?;
        Ok(())
    }

    async fn take_due(&self, now: u64, lease_secs: u64, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let args = [(now + lease_secs).to_string(), max.to_string()];
        let records: Vec<String> = self.delivery_step("take", now, &args).await?;
        // One record that does not decode (a newer release's) is left out,
        // not the batch.
        Ok(records
            .iter()
            .filter_map(|r| {
                delivery_of(r)
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "a delivery that does not decode is left out"),
                    )
                    .ok()
            })
            .collect())
    }

    async fn settle(&self, delivery: &Delivery, settled: &Settled, now: u64) -> Result<(), StoreError> {
        let mut delivery = delivery.clone();
        let mut args = vec![delivery.id.clone()];
        let end = match settled {
            Settled::Delivered { status } => {
                delivery.last_error = None;
                Some((DeliveryState::Delivered { at: now, status: *status }, "delivered"))
            }
            Settled::Dead { error } => {
                delivery.last_error = Some(error.clone());
                Some((DeliveryState::Dead { at: now }, "dead"))
            }
            Settled::Retry { error, .. } => {
                delivery.last_error = Some(error.clone());
                None
            }
        };
        args.push(encode(&delivery));
        match (end, settled) {
            (Some((state, kind)), _) => args.extend([
                "settled".to_owned(),
                encode(&state),
                kind.to_owned(),
                SETTLED_RETENTION_SECS.to_string(),
            ]),
            (None, Settled::Retry { due, .. }) => args.extend(["retry".to_owned(), due.to_string()]),
            (None, _) => unreachable!("only a retry leaves a delivery pending"),
        }
        let _: i64 = self.delivery_step("settle", now, &args).await?;
        Ok(())
    }

    async fn deliveries_of(
        &self,
        token: &ReplaceToken,
    ) -> Result<Vec<(Delivery, DeliveryState)>, StoreError> {
        let found: Vec<String> = self.delivery_step("list", unix_now(), &[token.as_str().to_owned()]).await?;
        found
            .chunks(3)
            .map(|entry| {
                let [record, settled, due] = entry else {
                    return Err(store_error(format!("unexpected delivery listing {entry:?}")));
                };
                let state = match (settled.as_str(), due.parse::<u64>()) {
                    ("", Ok(due)) => DeliveryState::Pending { due },
                    ("", Err(_)) => return Err(store_error("a pending delivery without a due time")),
                    (settled, _) => decode(settled)?,
                };
                Ok((delivery_of(record)?, state))
            })
            .collect()
    }

    async fn record_event(&self, token: &ReplaceToken, event: &Event) -> Result<(), StoreError> {
        let [hash, _] = self.keys.token(token);
        let args = [
            token.as_str().to_owned(),
            hash,
            encode(event),
            // Ordered by when it was recorded, to the microsecond.
            unix_micros().to_string(),
            EVENTS_KEPT.to_string(),
            EXPIRED_TOKEN_RETENTION_SECS.to_string(),
        ];
        let _: i64 = self.delivery_step("event", unix_now(), &args).await?;
        Ok(())
    }

    async fn events_of(&self, token: &ReplaceToken) -> Result<Vec<Event>, StoreError> {
        let events: Vec<String> =
            self.delivery_step("events", unix_now(), &[token.as_str().to_owned()]).await?;
        events.iter().map(|e| event_of(e)).collect()
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let args = [SETTLED_RETENTION_SECS.to_string()];
        let (pending, oldest, dead): (u64, String, u64) =
            self.delivery_step("stats", unix_now(), &args).await?;
        let oldest = oldest.parse::<f64>().ok().map(|created| created as u64);
        Ok(QueueStats { pending, oldest_pending: oldest, dead })
    }
}

/// A delivery as kept: queued on its own, or by a commit with its version
/// (see `lua/outbox.lua`), completed by it.
fn delivery_of(json: &str) -> Result<Delivery, StoreError> {
    match serde_json::from_str::<KeptWithCommit<Delivery>>(json) {
        Ok(kept) => {
            let (delivery, recorded) = kept.recorded();
            Ok(filled(&delivery, &recorded))
        }
        Err(_) => decode(json),
    }
}

/// An event as kept, completed as [`delivery_of`] does.
fn event_of(json: &str) -> Result<Event, StoreError> {
    match serde_json::from_str::<KeptWithCommit<Event>>(json) {
        Ok(kept) => {
            let (event, recorded) = kept.recorded();
            Ok(event.succeeded_as(&recorded))
        }
        Err(_) => decode(json),
    }
}
