//! Telling a site about outcomes by requests of the receiver's own (the
//! background callback, the webhook's events): signed so the site can
//! tell them from forgeries ([`signature`]), kept in the state store until
//! the site answers ([`queue`]; a commit writes its own, [`outbox`]), made
//! and retried with growing delays ([`worker`]). The queue's data and seam
//! live with the state store (`store::deliveries`, `store::delivery_queue`,
//! `store::events`, `store::outbox`); these are their names here.

pub mod signature;
pub mod worker;

/// The delivery queue: its data and its seam.
pub mod queue {
    pub use crate::store::deliveries::{
        Channel, Delivery, DeliveryState, EVENTS_KEPT, Payload, QueueStats, Settled,
    };
    pub use crate::store::delivery_queue::DeliveryQueue;
}

/// The outcome of a redeem as the webhook tells it.
pub mod event {
    pub use crate::store::events::{Event, EventType, EventVersion};
}

/// What a commit writes with its version.
pub mod outbox {
    pub use crate::store::deliveries::Outbox;
    pub use crate::store::outbox::{KeptWithCommit, filled};
}
