//! The delivery queue's data (its seam is `delivery_queue.rs`'s
//! `DeliveryQueue`): requests to sites (background callbacks,
//! webhook events) kept in the state store until a site answers them, so that they survive
//! a failed attempt, a restart and the death of the instance making them.
//!
//! A delivery is *pending* until it is delivered (a `2xx`) or dead (a
//! permanent refusal, or retried for `callback.retry_for_secs` in vain).
//! A pending delivery is due at a time; taking it ([`DeliveryQueue::take_due`])
//! leases it to one instance by moving that time past its attempt, so no
//! other instance makes it meanwhile, and an instance that dies mid-attempt
//! only delays it until the lease runs out: delivered at least once, usually
//! once. Settled deliveries are kept for the token's status for as long as
//! an expired token is kept.

use serde::{Deserialize, Serialize};

use super::events::Event;
use crate::domain::ReplaceToken;
use crate::return_data::ReturnData;

/// How a site is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The 23-compatible background callback to `return_url`.
    Callback,
    /// The JSON event POSTed to `webhook.url`.
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Callback => "callback",
            Channel::Webhook => "webhook",
        }
    }
}

/// What a delivery sends; the request is made from it at each attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Callback { return_url: String, data: ReturnData },
    Webhook { url: String, event: Event },
}

/// One message to a site about one outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Random, unique.
    pub id: String,
    pub channel: Channel,
    /// The token whose redeem it tells of (its status lists it).
    pub token: ReplaceToken,
    /// The outcome's event (see [`DeliveryQueue::record_event`]).
    #[serde(default)]
    pub event_id: Option<String>,
    pub payload: Payload,
    pub created_at: u64,
    /// Retried until then (`created_at + callback.retry_for_secs`), then dead.
    pub retry_until: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// Where a delivery stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    Pending { due: u64 },
    Delivered { at: u64, status: u16 },
    Dead { at: u64 },
}

/// How an attempt ended, for [`DeliveryQueue::settle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Delivered {
        status: u16,
    },
    /// Failed; made again at `due`.
    Retry {
        error: String,
        due: u64,
    },
    /// Failed for good.
    Dead {
        error: String,
    },
}

/// The queue's figures, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub pending: u64,
    /// When the oldest pending delivery was created.
    pub oldest_pending: Option<u64>,
    pub dead: u64,
}

/// How many outcomes are kept per token: its uploads, and its failures up
/// to this many in all.
pub const EVENTS_KEPT: usize = 1000;

/// A commit's event and deliveries, before the commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outbox {
    /// The success event (its version still to fill in).
    pub event: Option<Event>,
    /// Deliveries, each with the time it is due.
    pub deliveries: Vec<(Delivery, u64)>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.event.is_none() && self.deliveries.is_empty()
    }
}

/// How long a delivered or dead delivery is kept (for the token's status
/// and the count of dead ones).
pub const SETTLED_RETENTION_SECS: u64 = 7 * 86_400;
