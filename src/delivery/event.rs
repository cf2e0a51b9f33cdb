//! The outcome of a redeem as the webhook tells it: one JSON object per
//! upload that ended, with an `event_id` receivers de-duplicate on.

use serde::{Deserialize, Serialize};

use crate::domain::random_bytes;
use crate::store::{RecordedVersion, TokenGrant};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "upload.succeeded")]
    Succeeded,
    #[serde(rename = "upload.failed")]
    Failed,
    /// A file sent in chunks that no chunk came to for its idle time.
    #[serde(rename = "upload.abandoned")]
    Abandoned,
}

/// The version an upload made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventVersion {
    pub number: u32,
    pub object_key: String,
    pub size: u64,
    pub content_type: String,
    /// `sha256:<hex>` or `crc64nvme:<hex>`.
    pub checksum: String,
}

/// One outcome, in the webhook's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub occurred_at: u64,
    /// `replace` or `upload`.
    pub token_kind: String,
    pub token: String,
    /// The photo replaced or made; a failed upload token's has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photo_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<EventVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
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
