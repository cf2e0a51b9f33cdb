//! `/api/photo/get-token-status` (`read`): how a replace or upload token
//! stands: its terms, its uploads used, left and in flight, its files in
//! progress (sent in chunks), and each upload that ended, with how its
//! background callback and its webhook event were delivered.

use super::call::ApiRequest;
use crate::context::Context;
use crate::delivery::event::{Event, EventType};
use crate::delivery::queue::{Channel, Delivery, DeliveryState};
use crate::domain::{ReplaceToken, unix_now};
use crate::envelope::{Item, List, Success};
use crate::error::ApiError;
use crate::store::chunked::FileProgress;
use crate::store::{TokenKind, TokenStatus};

#[tracing::instrument(skip_all)]
pub async fn get_token_status(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let params = &request.params;
    let (kind, given) = match (params.single("replace_token")?, params.single("upload_token")?) {
        (Some(token), None) => (TokenKind::Replace, token),
        (None, Some(token)) => (TokenKind::Upload, token),
        (None, None) => {
            return Err(ApiError::InvalidInput("replace_token or upload_token is required".into()));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidInput("give replace_token or upload_token, not both".into()));
        }
    };
    let unknown = || ApiError::InvalidInput(format!("{} is unknown", kind.field()));
    // A malformed token cannot exist: it is simply unknown.
    let token: ReplaceToken = given.parse().map_err(|_| unknown())?;
    let now = unix_now();
    let status =
        ctx.state.token_status(&token, now).await?.filter(|s| s.grant.kind() == kind).ok_or_else(unknown)?;
    let files = ctx.chunked.files_of(&token, now).await?;
    let events = ctx.deliveries.events_of(&token).await?;
    let deliveries = ctx.deliveries.deliveries_of(&token).await?;
    Ok(Success {
        message: "Token status".into(),
        object_name: "tokenstatus",
        fields: terms(&status),
        list: None,
        lists: vec![
            List { element: "file", json_key: "files", items: files.iter().map(file_item).collect() },
            List {
                element: "upload",
                json_key: "uploads",
                items: events.iter().map(|event| upload_item(event, &deliveries)).collect(),
            },
        ],
    })
}

fn terms(status: &TokenStatus) -> Vec<(String, String)> {
    let grant = &status.grant;
    let left = grant.max_uploads.saturating_sub(status.uploads_used + status.uploads_in_flight);
    [
        (grant.kind().field(), grant.token.to_string()),
        ("max_uploads", grant.max_uploads.to_string()),
        ("valid_until", grant.valid_until.to_string()),
        ("return_url", grant.return_url.clone().unwrap_or_default()),
        ("background_return_p", if grant.background_return { "1" } else { "0" }.to_owned()),
        ("uploads_used", status.uploads_used.to_string()),
        ("uploads_left", left.to_string()),
        ("uploads_in_flight", status.uploads_in_flight.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

fn file_item(file: &FileProgress) -> Item {
    let fields = [
        ("identifier", file.identifier.clone()),
        ("chunks_received", file.chunks_received.to_string()),
        ("total_chunks", file.total_chunks.map(|n| n.to_string()).unwrap_or_default()),
        ("bytes_received", file.bytes_received.to_string()),
        ("total_size", file.total_size.to_string()),
    ];
    Item { fields: fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(), lists: Vec::new() }
}

/// One upload that ended, and the delivery of its callback and webhook
/// (`none` when there was none to make).
fn upload_item(event: &Event, deliveries: &[(Delivery, DeliveryState)]) -> Item {
    let mut fields = vec![
        ("event_id".to_owned(), event.event_id.clone()),
        (
            "outcome".to_owned(),
            match event.kind {
                EventType::Succeeded => "succeeded",
                EventType::Failed => "failed",
                EventType::Abandoned => "abandoned",
            }
            .to_owned(),
        ),
        ("occurred_at".to_owned(), event.occurred_at.to_string()),
        ("photo_id".to_owned(), event.photo_id.clone().unwrap_or_default()),
        ("version".to_owned(), event.version.as_ref().map(|v| v.number.to_string()).unwrap_or_default()),
        ("error_message".to_owned(), event.error_message.clone().unwrap_or_default()),
    ];
    for channel in [Channel::Callback, Channel::Webhook] {
        let name = channel.as_str();
        let delivery = deliveries
            .iter()
            .find(|(d, _)| d.channel == channel && d.event_id.as_deref() == Some(event.event_id.as_str()));
        let (state, attempts, error) = match delivery {
            None => ("none", 0, None),
            Some((d, state)) => (
                match state {
                    DeliveryState::Pending { .. } => "pending",
                    DeliveryState::Delivered { .. } => "delivered",
                    DeliveryState::Dead { .. } => "dead",
                },
                d.attempts,
                d.last_error.clone(),
            ),
        };
        fields.push((name.to_owned(), state.to_owned()));
        fields.push((format!("{name}_attempts"), attempts.to_string()));
        fields.push((format!("{name}_last_error"), error.unwrap_or_default()));
    }
    Item { fields, lists: Vec::new() }
}
