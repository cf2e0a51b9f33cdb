//! Making deliveries: the first attempt by the request whose outcome it
//! tells ([`first_attempt`]), the retries by every instance from the queue
//! ([`run`]), each attempt signed and bounded by `callback.timeout_secs`;
//! and the outcomes no request sees: chunked files abandoned.
//!
//! An attempt that fails for a passing reason (no connection, a timeout, a
//! `5xx`, `408`, `429`) is retried after a growing, jittered delay
//! (`callback.retry_initial_delay_secs`, 10 s by default, doubled after
//! each attempt, at most an hour) until `callback.retry_for_secs` after the
//! delivery was made; a refusal that will not pass (the SSRF rules, any
//! other status) ends it at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use http::StatusCode;

use super::event::Event;
use super::queue::{Channel, Delivery, Payload, Settled};
use crate::callback::CallbackError;
use crate::context::Context;
use crate::domain::{ReplaceToken, random_bytes, unix_now};

/// How often the queue is asked for due deliveries.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries taken, and attempted together, at a time.
const BATCH: usize = 32;
/// The longest delay between two attempts.
const MAX_RETRY_SECS: u64 = 3600;

/// A new delivery's id.
fn new_delivery_id() -> String {
    hex::encode(random_bytes::<16>())
}

/// A new delivery of `payload` about event `event_id` of `token`'s
/// redeem, made at `now`, retried for `callback.retry_for_secs`.
pub fn new_delivery(
    ctx: &Context,
    channel: Channel,
    token: &ReplaceToken,
    event_id: &str,
    payload: Payload,
    now: u64,
) -> Delivery {
    Delivery {
        id: new_delivery_id(),
        channel,
        token: token.clone(),
        event_id: Some(event_id.to_owned()),
        payload,
        created_at: now,
        retry_until: now + ctx.config.callback.retry_for_secs,
        attempts: 0,
        last_error: None,
    }
}

/// How long a taken delivery is held: its attempt, and a margin.
pub fn lease_secs(ctx: &Context) -> u64 {
    ctx.config.callback.timeout_secs + 5
}

/// Keeps `event`, an outcome of `token`'s redeem, for the token's status,
/// and queues it for the webhook, if one is configured, due at once (an
/// instance's worker takes it within a second); returns its id. A store
/// that cannot be reached loses it (logged): the outcome is answered
/// anyway.
pub async fn record_outcome(ctx: &Context, token: &ReplaceToken, event: Event) -> String {
    let event_id = event.event_id.clone();
    if let Err(e) = ctx.deliveries.record_event(token, &event).await {
        tracing::warn!(error = %crate::causes::chain(&e), event = %event_id, "an outcome could not be kept for the token's status");
    }
    let Some(url) = ctx.config.webhook.url.clone() else { return event_id };
    let now = unix_now();
    let delivery =
        new_delivery(ctx, Channel::Webhook, token, &event_id, Payload::Webhook { url, event }, now);
    if let Err(e) = ctx.deliveries.enqueue(&delivery, now).await {
        tracing::warn!(error = %crate::causes::chain(&e), delivery = %delivery.id, "a webhook event could not be queued");
    }
    event_id
}

/// What one attempt did.
pub struct Attempted {
    /// The URL requested.
    pub url: String,
    pub result: Result<StatusCode, CallbackError>,
}

/// Makes the first attempt at `delivery`, queued and held for it (until
/// [`lease_secs`] from now), and records how it ended.
pub async fn attempt_held(ctx: &Context, delivery: Delivery) -> Attempted {
    let ((delivery, attempted), settled) = attempt(ctx, delivery).await;
    settle(ctx, &delivery, &settled).await;
    attempted
}

/// Makes one attempt at `delivery`: the delivery as attempted (its count
/// of attempts and its last error updated) and how it ended.
async fn attempt(ctx: &Context, mut delivery: Delivery) -> ((Delivery, Attempted), Settled) {
    delivery.attempts += 1;
    let channel = delivery.channel.as_str();
    let attempted = match &delivery.payload {
        Payload::Callback { return_url, data } => match url::Url::parse(return_url) {
            Ok(url) => {
                let report = ctx.callbacks.call(&url, data).await;
                Attempted { url: report.url, result: report.result }
            }
            Err(e) => not_a_url(return_url, e),
        },
        Payload::Webhook { url, event } => match url::Url::parse(url) {
            Ok(parsed) => {
                let json = serde_json::to_vec(event).expect("events always serialize");
                let report = ctx.callbacks.post_json(&parsed, json).await;
                Attempted { url: report.url, result: report.result }
            }
            Err(e) => not_a_url(url, e),
        },
    };
    if delivery.channel == Channel::Callback {
        count_callback(ctx, &attempted.result);
    }
    let now = unix_now();
    let settled = match &attempted.result {
        Ok(status) => Settled::Delivered { status: status.as_u16() },
        Err(error) if !passing(error) => Settled::Dead { error: error.to_string() },
        Err(error) => {
            let due = now + retry_delay(delivery.attempts, ctx.config.callback.retry_initial_delay_secs);
            if due > delivery.retry_until {
                let attempts = delivery.attempts;
                Settled::Dead { error: format!("given up after {attempts} attempts: {error}") }
            } else {
                Settled::Retry { error: error.to_string(), due }
            }
        }
    };
    let result = match &settled {
        Settled::Delivered { .. } => "delivered",
        Settled::Retry { .. } => "retry",
        Settled::Dead { .. } => "dead",
    };
    ctx.metrics.deliveries.with_label_values(&[channel, result]).inc();
    match &settled {
        Settled::Delivered { status } => {
            tracing::info!(delivery = %delivery.id, channel, status, attempt = delivery.attempts, "delivered")
        }
        Settled::Retry { error, due } => {
            tracing::warn!(delivery = %delivery.id, channel, error, retry_in = due - now, attempt = delivery.attempts, "delivery failed; it will be retried")
        }
        Settled::Dead { error } => {
            tracing::warn!(delivery = %delivery.id, channel, error, attempt = delivery.attempts, "delivery given up")
        }
    }
    ((delivery, attempted), settled)
}

/// A stored URL that does not parse (it did when it was stored).
fn not_a_url(url: &str, error: url::ParseError) -> Attempted {
    Attempted {
        url: url.to_owned(),
        result: Err(CallbackError::Forbidden(format!("{url:?} is not a URL: {error}"))),
    }
}

/// The older per-result count of background callbacks.
fn count_callback(ctx: &Context, result: &Result<StatusCode, CallbackError>) {
    let label = match result {
        Ok(_) => "ok",
        Err(CallbackError::Forbidden(_)) => "forbidden",
        Err(CallbackError::Timeout) => "timeout",
        Err(CallbackError::Status(_)) => "bad_status",
        Err(_) => "failed",
    };
    ctx.metrics.callbacks.with_label_values(&[label]).inc();
}

/// Whether a failed attempt may succeed later.
fn passing(error: &CallbackError) -> bool {
    match error {
        CallbackError::Forbidden(_) => false,
        CallbackError::Status(status) => {
            status.is_server_error()
                || *status == StatusCode::REQUEST_TIMEOUT
                || *status == StatusCode::TOO_MANY_REQUESTS
        }
        CallbackError::Resolve(_)
        | CallbackError::Connect(_)
        | CallbackError::Request(_)
        | CallbackError::Timeout => true,
    }
}

/// The delay before attempt `attempts + 1`: doubling from `initial` up to
/// [`MAX_RETRY_SECS`], between 75 % and 125 % of that so that deliveries
/// failed together are not retried together.
pub fn retry_delay(attempts: u32, initial: u64) -> u64 {
    let base = initial.saturating_mul(1 << attempts.saturating_sub(1).min(20)).min(MAX_RETRY_SECS);
    let [jitter] = random_bytes::<1>();
    base * (192 + u64::from(jitter) / 2) / 256
}

async fn settle(ctx: &Context, delivery: &Delivery, settled: &Settled) {
    if let Err(e) = ctx.deliveries.settle(delivery, settled, unix_now()).await {
        // Still pending, leased: it is attempted again when the lease ends.
        tracing::warn!(error = %crate::causes::chain(&e), delivery = %delivery.id, "a delivery's attempt could not be recorded");
    }
}

/// How often abandoned chunked files are looked for, for their events.
const ABANDONED_POLL: Duration = Duration::from_secs(5);

/// Records the outcome of every chunked file abandoned since the last look
/// (each file is taken by one instance).
async fn tell_abandoned(ctx: &Context) {
    let max = BATCH * 4;
    loop {
        let now = unix_now();
        let files = match ctx.chunked.take_abandoned(now, max).await {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(error = %crate::causes::chain(&e), "looking for abandoned chunked files failed");
                return;
            }
        };
        let full = files.len() == max;
        for file in files {
            let idle = ctx.config.limits.chunked_idle_timeout_secs;
            let message = format!(
                "The file {:?} was abandoned: no chunk came for {idle} seconds ({} chunks, of {} bytes, had arrived).",
                file.identifier, file.chunks_received, file.total_size
            );
            tracing::info!(token = ?file.grant.token, identifier = %file.identifier, "chunked file abandoned");
            let token = file.grant.token.clone();
            record_outcome(ctx, &token, Event::abandoned(&file.grant, message, now)).await;
        }
        if !full {
            return;
        }
    }
}

/// Runs forever: takes due deliveries from the queue and attempts them,
/// keeps the queue's gauges current, and tells of abandoned files.
pub async fn run(ctx: Arc<Context>) {
    let mut ticks = tokio::time::interval(POLL);
    let mut abandoned = tokio::time::interval(ABANDONED_POLL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = abandoned.tick() => {
                tell_abandoned(&ctx).await;
                continue;
            }
        }
        // Batch after batch while they come full (a backlog after an outage
        // drains at once), then wait for the next tick.
        loop {
            match ctx.deliveries.take_due(unix_now(), lease_secs(&ctx), BATCH).await {
                Ok(due) => {
                    let full = due.len() == BATCH;
                    let attempts = due.into_iter().map(|delivery| {
                        let ctx = Arc::clone(&ctx);
                        async move {
                            let ((delivery, _), settled) = attempt(&ctx, delivery).await;
                            settle(&ctx, &delivery, &settled).await;
                        }
                    });
                    join_all(attempts).await;
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::causes::chain(&e), "taking due deliveries failed");
                    break;
                }
            }
        }
        if let Ok(stats) = ctx.deliveries.stats().await {
            let metrics = &ctx.metrics;
            metrics.deliveries_pending.set(i64::try_from(stats.pending).unwrap_or(i64::MAX));
            let age = stats.oldest_pending.map_or(0, |created| unix_now().saturating_sub(created));
            metrics.deliveries_oldest_pending_seconds.set(i64::try_from(age).unwrap_or(i64::MAX));
            metrics.deliveries_dead.set(i64::try_from(stats.dead).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_ten_seconds_to_an_hour_with_jitter() {
        for (attempts, base) in [(1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600), (40, 3600)] {
            for _ in 0..50 {
                let delay = retry_delay(attempts, 10);
                assert!((base * 3 / 4..=base * 5 / 4).contains(&delay), "{attempts}: {delay}");
            }
        }
    }

    #[test]
    fn refusals_that_will_not_pass_are_not_retried() {
        assert!(!passing(&CallbackError::Forbidden("10.0.0.1".into())));
        for status in [StatusCode::FOUND, StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::GONE] {
            assert!(!passing(&CallbackError::Status(status)), "{status}");
        }
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            assert!(passing(&CallbackError::Status(status)), "{status}");
        }
        assert!(passing(&CallbackError::Timeout) && passing(&CallbackError::Connect("refused".into())));
    }
}
