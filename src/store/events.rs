//! The outcome of a redeem as the webhook tells it: one JSON object per
//! upload that ended, with an `event_id` receivers de-duplicate on. (Made
//! in `outbox.rs`, from a token's terms and a commit's version.)

use serde::{Deserialize, Serialize};

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
