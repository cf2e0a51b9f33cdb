//! The last step of a redeem: the one function that turns how it ended into
//! the answer — a plain-text refusal, or the outcome told to the site by
//! the means the token chose (a `303`, an auto-submitting POST form, a
//! background callback, or a bare `200 OK` without a return URL).

use http::{Response, StatusCode};

use super::error::{Failure, RedeemError, Refusal, SiteReturn};
use crate::callback::{self, Outcome, ReturnData};
use crate::context::Context;
use crate::delivery::event::Event;
use crate::delivery::queue::{Channel, Delivery, Payload};
use crate::delivery::worker::{self, new_delivery_id};
use crate::domain::unix_now;
use crate::http::{Body, text};
use crate::store::{RecordedVersion, TokenGrant, TokenKind};

/// A committed redeem.
pub struct Redeemed {
    pub site: SiteReturn,
    pub recorded: RecordedVersion,
    /// Committed before, by another request (a chunk of a complete file
    /// sent again): the same answer, and no second callback.
    pub replayed: bool,
}

/// How a redeem that was not refused ended.
pub enum Received {
    File(Box<Redeemed>),
    /// A chunk stored; its file is not complete yet.
    ChunkStored,
}

/// Logs how the redeem ended and answers it.
pub async fn answer(ctx: &Context, kind: TokenKind, ended: Result<Received, RedeemError>) -> Response<Body> {
    // `event`: the outcome's, for a redeem that ended now (not told again).
    let (site, outcome, client_gone, event) = match ended {
        Ok(Received::ChunkStored) => return text(StatusCode::OK, "ok".into()),
        Ok(Received::File(redeemed)) => {
            let Redeemed { site, recorded, replayed } = *redeemed;
            let done = match (replayed, kind) {
                (true, _) => "chunked upload answered again",
                (false, TokenKind::Upload) => "photo uploaded",
                (false, TokenKind::Replace) => "photo replaced",
            };
            tracing::info!(photo_id = %recorded.photo_id, version = recorded.version.number, size = recorded.version.file.size, "{done}");
            let event = (!replayed).then(|| Event::succeeded(&site.grant, &recorded, unix_now()));
            let outcome = Outcome::Stored {
                photo_id: recorded.photo_id.to_string(),
                tree_id: recorded.tree_id,
                token: recorded.token.as_str().to_owned(),
            };
            (site, outcome, false, event)
        }
        Err(error) => {
            error.log();
            match error {
                RedeemError::Refused(refusal) => {
                    if let Refusal::UnknownTokenPastBudget = refusal {
                        // The upload permit is back already; only this answer waits.
                        let delay = ctx.config.limits.redeem_rate_limit_delay_ms;
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    }
                    return refusal.answer(kind);
                }
                RedeemError::Failed { site, cause } => {
                    let (client_gone, told) = (cause.client_gone(), matches!(cause, Failure::Told(_)));
                    let error_message = cause.error_message();
                    let event = (!told).then(|| Event::failed(&site.grant, &error_message, unix_now()));
                    (site, Outcome::Failed { error_message }, client_gone, event)
                }
            }
        }
    };
    let SiteReturn { grant, extras, by_script } = site;
    let data = ReturnData {
        domain: ctx.config.site.domain.clone(),
        token: (kind.field().to_owned(), grant.token.to_string()),
        outcome,
        extras,
    };
    let event_id = match event {
        Some(event) => Some(worker::record_outcome(ctx, &grant.token, event).await),
        None => None,
    };
    deliver(ctx, &grant, by_script, &data, client_gone, event_id).await
}

/// Tells the site and the client how it went; `by_script`: see
/// [`SiteReturn`]; `event_id`: the outcome's, `None` when the site was
/// told already.
async fn deliver(
    ctx: &Context,
    grant: &TokenGrant,
    by_script: bool,
    data: &ReturnData,
    client_gone: bool,
    event_id: Option<String>,
) -> Response<Body> {
    let return_url = grant.return_url.as_deref().and_then(|u| url::Url::parse(u).ok());
    let Some(return_url) = return_url else {
        // A script's failure has a status both libraries take as final.
        let failed = if by_script { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::BAD_REQUEST };
        return match &data.outcome {
            Outcome::Stored { .. } => text(StatusCode::OK, "OK\n".into()),
            Outcome::Failed { error_message } => text(failed, format!("{error_message}\n")),
        };
    };
    if !grant.background_return {
        if by_script {
            // A script would follow a redirect invisibly: the page navigates.
            let url = callback::url_with(&return_url, &data.params());
            return text(StatusCode::OK, url.to_string());
        }
        return callback::browser_answer(&return_url, data);
    }
    let callback_url = callback::callback_url(&return_url, data);
    let Some(event_id) = event_id else {
        return text(StatusCode::OK, callback::background_answer(data, &callback_url));
    };
    if client_gone {
        // Nobody is waiting for this answer: do not call the site about an
        // upload that was abandoned.
        return text(StatusCode::BAD_REQUEST, callback::background_answer(data, ""));
    }
    // The site is told by a delivery kept until it answers; the client is
    // told the outcome whatever the first attempt did.
    let now = unix_now();
    let delivery = Delivery {
        id: new_delivery_id(),
        channel: Channel::Callback,
        token: grant.token.clone(),
        event_id: Some(event_id),
        payload: Payload::Callback { return_url: return_url.to_string(), data: data.clone() },
        created_at: now,
        retry_until: now + ctx.config.callback.retry_for_secs,
        attempts: 0,
        last_error: None,
    };
    let attempted = worker::first_attempt(ctx, delivery).await;
    if let Err(e) = &attempted.result {
        tracing::info!(url = %attempted.url, error = %e, "the outcome is told to the client; its callback is kept for retries");
    }
    text(StatusCode::OK, callback::background_answer(data, &callback_url))
}
