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

use super::deliveries::{Delivery, Payload};
use super::events::{Event, EventType, EventVersion};
use super::{PhotoRecord, PhotoVersion, RecordedVersion, TokenGrant};
use crate::domain::random_bytes;
use crate::return_data::Outcome;

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

impl Event {
    fn of(grant: &TokenGrant, kind: EventType, now: u64) -> Event {
        Event {
            event_id: format!("evt_{}", hex::encode(random_bytes::<16>())),
            kind,
            occurred_at: now,
            token_kind: grant.kind().as_str().to_owned(),
            token: grant.token.as_str().to_owned(),
            photo_id: grant.photo_id().map(|id| id.to_string()),
            tree_id: None,
            version: None,
            error_message: None,
        }
    }

    /// `grant`'s upload, about to be committed: [`Event::succeeded_as`]
    /// completes it once it is.
    pub fn success_of(grant: &TokenGrant, now: u64) -> Event {
        Event::of(grant, EventType::Succeeded, now)
    }

    /// This event, of an upload that made `recorded`.
    pub fn succeeded_as(&self, recorded: &RecordedVersion) -> Event {
        let file = &recorded.version.file;
        Event {
            kind: EventType::Succeeded,
            photo_id: Some(recorded.photo_id.to_string()),
            tree_id: Some(recorded.tree_id.clone()),
            version: Some(EventVersion {
                number: recorded.version.number,
                object_key: file.object_key.clone(),
                size: file.size,
                content_type: file.content_type.clone(),
                checksum: file.checksum(),
            }),
            error_message: None,
            ..self.clone()
        }
    }

    /// A file of `grant`'s, sent in chunks, abandoned: `error_message`
    /// says which and how far it came.
    pub fn abandoned(grant: &TokenGrant, error_message: String, now: u64) -> Event {
        Event { error_message: Some(error_message), ..Event::of(grant, EventType::Abandoned, now) }
    }

    /// `grant`'s upload failed, the site being told `error_message`.
    pub fn failed(grant: &TokenGrant, error_message: &str, now: u64) -> Event {
        Event { error_message: Some(error_message.to_owned()), ..Event::of(grant, EventType::Failed, now) }
    }
}
