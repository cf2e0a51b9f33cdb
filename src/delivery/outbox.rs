//! What a commit writes with the version it records, in the same atomic
//! step (one Redis script, one redb transaction): the upload's event (for
//! the token's status and the webhook) and its deliveries. An instance
//! that dies right after the commit so loses nothing: the deliveries are
//! queued already, and the others make them.
//!
//! The redeem builds the outbox before the commit, from what it knows
//! then; the parts only the commit knows (the photo's id for an upload
//! token, its secret token, the version) are filled in from the recorded
//! version ([`filled`], [`Event::succeeded_as`]), by the embedded store in the transaction and by
//! the Redis readers, which keep the commit's record and version beside
//! each entry.

use serde::{Deserialize, Serialize};

use super::event::Event;
use super::queue::{Delivery, Payload};
use crate::callback::Outcome;
use crate::store::{PhotoRecord, PhotoVersion, RecordedVersion};

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

/// `delivery` completed by the version a commit recorded.
pub fn filled(delivery: &Delivery, recorded: &RecordedVersion) -> Delivery {
    let payload = match &delivery.payload {
        Payload::Callback { return_url, data } => {
            let mut data = data.clone();
            data.outcome = Outcome::Stored {
                photo_id: recorded.photo_id.to_string(),
                tree_id: recorded.tree_id.clone(),
                token: recorded.token.as_str().to_owned(),
            };
            Payload::Callback { return_url: return_url.clone(), data }
        }
        Payload::Webhook { url, event } => {
            Payload::Webhook { url: url.clone(), event: event.succeeded_as(recorded) }
        }
    };
    Delivery { payload, ..delivery.clone() }
}

/// How the Redis commit scripts keep an outbox entry: the entry as built
/// before the commit (`t`), with the commit's photo record (`r`) and
/// version (`v`).
#[derive(Deserialize, Serialize)]
pub struct KeptWithCommit<T> {
    pub t: T,
    pub r: PhotoRecord,
    pub v: PhotoVersion,
}

impl<T> KeptWithCommit<T> {
    pub fn recorded(self) -> (T, RecordedVersion) {
        let recorded = self.r.recorded(self.v);
        (self.t, recorded)
    }
}
