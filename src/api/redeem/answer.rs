//! The last step of a redeem: the one function that turns how it ended into
//! the answer — a plain-text refusal, or the outcome told to the site by
//! the means the token chose (a `303`, an auto-submitting POST form, a
//! background callback, or a bare `200 OK` without a return URL).

use http::{Response, StatusCode};

use super::chunk::is_protocol_parameter;
use super::error::{Failure, RedeemError, Refusal, SiteReturn};
use crate::callback::{self, Outcome, ReturnData};
use crate::context::Context;
use crate::delivery::event::Event;
use crate::delivery::outbox::{Outbox, filled};
use crate::delivery::queue::{Channel, Delivery, Payload};
use crate::delivery::worker;
use crate::domain::unix_now;
use crate::http::{Body, text};
use crate::store::{RecordedVersion, TokenGrant, TokenKind, TokenPurpose};

/// A committed redeem.
pub struct Redeemed {
    pub site: SiteReturn,
    pub recorded: RecordedVersion,
    /// What its commit queued (see [`outbox_for`]); `None`: committed
    /// before, by another request (a chunk of a complete file sent again):
    /// the same answer, and no second callback.
    pub outbox: Option<Outbox>,
}

/// What a commit of `site`'s redeem writes with its version: the success
/// event, the webhook's delivery of it (if one is configured, due at once)
/// and the background callback (in background mode, held for the first
/// attempt this request makes after the commit).
pub fn outbox_for(ctx: &Context, kind: TokenKind, site: &SiteReturn, now: u64) -> Outbox {
    let grant = &site.grant;
    let event = Event::success_of(grant, now);
    let delivery =
        |channel, payload| worker::new_delivery(ctx, channel, &grant.token, &event.event_id, payload, now);
    let mut deliveries = Vec::new();
    if let Some(url) = ctx.config.webhook.url.clone() {
        deliveries.push((delivery(Channel::Webhook, Payload::Webhook { url, event: event.clone() }), now));
    }
    let return_url = grant.return_url.as_deref().and_then(|u| url::Url::parse(u).ok());
    if let Some(return_url) = return_url.filter(|_| grant.background_return) {
        // The outcome's own parts come with the commit.
        let placeholder =
            Outcome::Stored { photo_id: String::new(), tree_id: String::new(), token: String::new() };
        let data = return_data(ctx, kind, site, placeholder);
        let callback =
            delivery(Channel::Callback, Payload::Callback { return_url: return_url.to_string(), data });
        deliveries.push((callback, now + worker::lease_secs(ctx)));
    }
    Outbox { event: Some(event), deliveries }
}

/// The return data of `site`'s redeem with `outcome`.
fn return_data(ctx: &Context, kind: TokenKind, site: &SiteReturn, outcome: Outcome) -> ReturnData {
    ReturnData {
        domain: ctx.config.site.domain.clone(),
        token: (kind.field().to_owned(), site.grant.token.to_string()),
        outcome,
        extras: site.extras.clone(),
    }
}

/// How the site hears of an outcome by background callback.
enum Told {
    /// Already (an outcome answered again): not again.
    Already,
    /// By the delivery the commit queued (held for this first attempt).
    Queued(Option<Box<Delivery>>),
    /// By a delivery still to queue, of event `event_id` (a failure).
    ToQueue { event_id: String },
}

/// How a redeem that was not refused ended.
pub enum Received {
    File(Box<Redeemed>),
    /// A chunk stored; its file is not complete yet.
    ChunkStored,
}

/// Logs how the redeem ended and answers it.
pub async fn answer(ctx: &Context, kind: TokenKind, ended: Result<Received, RedeemError>) -> Response<Body> {
    let (site, outcome, client_gone, told) = match ended {
        Ok(Received::ChunkStored) => return text(StatusCode::OK, "ok".into()),
        Ok(Received::File(redeemed)) => {
            let Redeemed { site, recorded, outbox } = *redeemed;
            let done = match (outbox.is_none(), kind) {
                (true, _) => "chunked upload answered again",
                (false, TokenKind::Upload) => "photo uploaded",
                (false, TokenKind::Replace) => "photo replaced",
            };
            tracing::info!(photo_id = %recorded.photo_id, version = recorded.version.number, size = recorded.version.file.size, "{done}");
            let told = match outbox {
                None => Told::Already,
                Some(outbox) => {
                    let callback = outbox.deliveries.iter().find(|(d, _)| d.channel == Channel::Callback);
                    Told::Queued(callback.map(|(d, _)| Box::new(filled(d, &recorded))))
                }
            };
            let outcome = Outcome::Stored {
                photo_id: recorded.photo_id.to_string(),
                tree_id: recorded.tree_id,
                token: recorded.token.as_str().to_owned(),
            };
            (site, outcome, false, told)
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
                    let told = match told {
                        true => Told::Already,
                        false => {
                            let event = Event::failed(&site.grant, &error_message, unix_now());
                            Told::ToQueue {
                                event_id: worker::record_outcome(ctx, &site.grant.token, event).await,
                            }
                        }
                    };
                    (site, Outcome::Failed { error_message }, client_gone, told)
                }
            }
        }
    };
    let data = return_data(ctx, kind, &site, outcome);
    deliver(ctx, &site.grant, site.by_script, &data, client_gone, told).await
}

/// Tells the site and the client how it went; `by_script`: see
/// [`SiteReturn`].
async fn deliver(
    ctx: &Context,
    grant: &TokenGrant,
    by_script: bool,
    data: &ReturnData,
    client_gone: bool,
    told: Told,
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
    let delivery = match told {
        Told::Already => return text(StatusCode::OK, callback::background_answer(data, &callback_url)),
        // Nobody is waiting for this answer: do not call the site about an
        // upload that was abandoned.
        Told::ToQueue { .. } if client_gone => {
            return text(StatusCode::BAD_REQUEST, callback::background_answer(data, ""));
        }
        Told::Queued(delivery) => delivery.map(|d| *d),
        Told::ToQueue { event_id } => {
            let now = unix_now();
            let payload = Payload::Callback { return_url: return_url.to_string(), data: data.clone() };
            let delivery =
                worker::new_delivery(ctx, Channel::Callback, &grant.token, &event_id, payload, now);
            if let Err(e) = ctx.deliveries.enqueue(&delivery, now + worker::lease_secs(ctx)).await {
                tracing::warn!(error = %crate::causes::chain(&e), "a callback could not be queued: it is attempted once");
            }
            Some(delivery)
        }
    };
    // The site is told by a delivery kept until it answers; the client is
    // told the outcome whatever the first attempt did.
    let Some(delivery) = delivery else {
        return text(StatusCode::OK, callback::background_answer(data, &callback_url));
    };
    let attempted = worker::attempt_held(ctx, delivery).await;
    if let Err(e) = &attempted.result {
        tracing::info!(url = %attempted.url, error = %e, "the outcome is told to the client; its callback is kept for retries");
    }
    text(StatusCode::OK, callback::background_answer(data, &callback_url))
}

/// Whom to tell: the token's terms, and the extra parameters repeated to
/// the site: an upload token's own first, then the request's (query, then
/// fields; one given both ways with the same value, once). The site set
/// the token's, so a visitor's parameter of the same name is dropped
/// rather than allowed to stand in for it. A chunk's request (`by_script`)
/// leaves out the library's own parameters, which differ from chunk to
/// chunk.
pub fn site_return(
    field: &str,
    grant: &TokenGrant,
    query: &[(String, String)],
    fields: &[(String, String)],
    by_script: bool,
) -> SiteReturn {
    let own: &[(String, String)] = match &grant.purpose {
        TokenPurpose::Upload { upload } => &upload.extras,
        TokenPurpose::Replace { .. } => &[],
    };
    // A parameter sent both ways with the same value is repeated once.
    let from_form = fields.iter().filter(|pair| !query.contains(pair));
    let from_request = query
        .iter()
        .chain(from_form)
        .filter(|(name, _)| name != field && !own.iter().any(|(set, _)| set == name))
        .filter(|(name, _)| !(by_script && is_protocol_parameter(name)));
    SiteReturn { grant: grant.clone(), extras: own.iter().chain(from_request).cloned().collect(), by_script }
}
