//! `/api/photo/redeem-replace-token`: a browser (or Flash, or Resumable.js)
//! posts a file with a replace token; no OAuth, the token is the credential.
//!
//! One straight walk: find the token (query or form field) → reserve a slot
//! → stream the file to the object store → commit the slot with the new
//! version, or give it back → tell the site (redirect, POST form, or a
//! background callback). A token that is unknown, expired or used up gets a
//! plain-text error with a status that makes Resumable.js stop retrying.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{Body, BodyKind, body_kind, parse_urlencoded};
use crate::app::AppState;
use crate::callback::{self, CallbackError, Outcome, ReturnData};
use crate::domain::{ReplaceToken, unix_now};
use crate::store::{CommitError, Reservation, ReserveError};
use crate::upload::{self, FileGate, Gate, ReceiveError, UploadError};

const TOKEN_FIELD: &str = "replace_token";

/// Serves the redeem endpoint.
pub async fn handle(state: &Arc<AppState>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    match *request.method() {
        // Resumable.js asks (testChunks) whether a chunk is already there
        // before sending it; anything but 200 means "send it".
        http::Method::GET | http::Method::HEAD => empty(StatusCode::NO_CONTENT),
        http::Method::POST => {
            let address =
                super::client_address(request.headers(), peer, &state.config.server.trusted_proxies);
            redeem(state, request, &client_key(address)).await
        }
        _ => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
            response
        }
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A plain, unstyled text answer.
fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

/// Why no slot was reserved: answered in plain text, never redirected.
#[derive(Debug)]
enum Refusal {
    Missing,
    Duplicate,
    Unknown,
    UsedUp,
    Unavailable(String),
    /// `limits.max_concurrent_uploads` uploads are in progress.
    Busy,
    /// The client used up `limits.redeem_rate_limit_per_minute`; the
    /// window ends in this many seconds.
    TooManyFailures(u64),
}

impl Refusal {
    fn answer(&self) -> Response<Body> {
        match self {
            Refusal::Missing => text(StatusCode::BAD_REQUEST, "No replace_token was given.\n".into()),
            Refusal::Duplicate => {
                text(StatusCode::BAD_REQUEST, "replace_token was given more than once.\n".into())
            }
            // Unknown and expired tokens get the same answer, so it does not
            // tell which tokens exist.
            Refusal::Unknown => {
                text(StatusCode::NOT_FOUND, "The replace token is unknown or has expired.\n".into())
            }
            Refusal::UsedUp => text(StatusCode::NOT_FOUND, "The replace token has no uploads left.\n".into()),
            Refusal::Unavailable(cause) => {
                tracing::warn!(%cause, "redeem refused: the state store is unavailable");
                retry_later()
            }
            Refusal::Busy => {
                tracing::warn!("redeem refused: limits.max_concurrent_uploads reached");
                retry_later()
            }
            Refusal::TooManyFailures(seconds) => {
                let message = format!(
                    "Too many failed uploads from your address; please try again in {seconds} seconds.\n"
                );
                let mut response = text(StatusCode::TOO_MANY_REQUESTS, message);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
                response
            }
        }
    }
}

/// 503 with `Retry-After`: a passing condition, unlike every other refusal.
fn retry_later() -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "The service is temporarily unavailable; please try again.\n".into(),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// A reserved slot whose lease is renewed until the permit is dropped.
struct Permit {
    reservation: Reservation,
    renewal: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
    /// Committed or given back; until then, dropping the permit (the request
    /// was cut, e.g. at the shutdown deadline) gives the slot back.
    settled: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.settled {
            let (state, reservation) = (Arc::clone(&self.state), self.reservation.clone());
            crate::cleanup::spawn(async move { refund(&state, &reservation).await });
        }
    }
}

/// Who a failed redeem is counted against: an IPv4 address, or the /64
/// network of an IPv6 one (what one subscriber usually holds).
fn client_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

/// Opens when the request names a replace token that has an upload left.
struct TokenGate<'a> {
    state: &'a Arc<AppState>,
    /// `replace_token` values from the query string.
    from_query: Vec<String>,
    /// The client, for `limits.redeem_rate_limit_per_minute`.
    client: &'a str,
}

impl TokenGate<'_> {
    /// Refuses a client that has failed too often this minute. Checked
    /// before the token is looked up, so a guesser over the limit learns
    /// nothing more about any token.
    async fn check_failure_budget(&self, now: u64) -> Result<(), Refusal> {
        let limit = self.state.config.limits.redeem_rate_limit_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let failures = self.state.state.redeem_failures(self.client, now / 60).await;
        match failures {
            Ok(count) if count >= limit => Err(Refusal::TooManyFailures(60 - now % 60)),
            Ok(_) => Ok(()),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// Counts a failed redeem against the client.
    async fn count_failure(&self, now: u64) {
        if self.state.config.limits.redeem_rate_limit_per_minute == 0 {
            return;
        }
        if let Err(e) = self.state.state.count_redeem_failure(self.client, now / 60).await {
            tracing::warn!(error = %e, "a failed redeem could not be counted");
        }
    }
}

#[async_trait::async_trait]
impl FileGate for TokenGate<'_> {
    type Permit = Permit;
    type Refusal = Refusal;

    async fn open(
        &mut self,
        fields: &[(String, String)],
        body_complete: bool,
    ) -> Result<Gate<Permit>, Refusal> {
        let mut tokens =
            self.from_query.iter().chain(fields.iter().filter(|(n, _)| n == TOKEN_FIELD).map(|(_, v)| v));
        let Some(token) = tokens.next() else {
            return if body_complete { Err(Refusal::Missing) } else { Ok(Gate::NotYet) };
        };
        if tokens.next().is_some() {
            return Err(Refusal::Duplicate);
        }
        let now = unix_now();
        self.check_failure_budget(now).await?;
        let lease = self.state.config.state.slot_lease_secs;
        // A malformed token cannot exist: it is simply unknown.
        let reserved = match token.parse::<ReplaceToken>() {
            Ok(token) => self.state.state.reserve_slot(&token, now, lease).await,
            Err(_) => Err(ReserveError::Unknown),
        };
        let reservation = match reserved {
            Ok(reservation) => reservation,
            Err(ReserveError::Store(e)) => return Err(Refusal::Unavailable(e.to_string())),
            Err(refused) => {
                self.count_failure(now).await;
                return Err(match refused {
                    ReserveError::UsedUp => Refusal::UsedUp,
                    _ => Refusal::Unknown,
                });
            }
        };
        tracing::info!(token = ?reservation.grant.token, reservation = %reservation.id, "upload slot reserved");
        let renewal = tokio::spawn(renew_lease(Arc::clone(self.state), reservation.clone()));
        Ok(Gate::Open(Permit { reservation, renewal, state: Arc::clone(self.state), settled: false }))
    }
}

/// Renews a reservation's lease every third of its length while the upload
/// runs. A renewal that fails is logged; the commit then finds the lease
/// gone and records nothing, so `max_uploads` still holds.
async fn renew_lease(state: Arc<AppState>, reservation: Reservation) {
    let lease = state.config.state.slot_lease_secs;
    let mut ticks = tokio::time::interval(Duration::from_secs(lease / 3));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match state.state.renew_reservation(&reservation, unix_now(), lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(reservation = %reservation.id, "upload slot lease lost");
                return;
            }
            Err(e) => {
                tracing::warn!(reservation = %reservation.id, error = %e, "upload slot lease not renewed")
            }
        }
    }
}

#[tracing::instrument(skip_all)]
async fn redeem(state: &Arc<AppState>, request: Request<Incoming>, client: &str) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().map(|q| parse_urlencoded(q.as_bytes())).unwrap_or_default();
    let boundary = match body_kind(&parts.method, &parts.headers) {
        Ok(BodyKind::Multipart(boundary)) => boundary,
        Ok(_) => {
            return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Expected a multipart/form-data body.\n".into());
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{}\n", e.client_message())),
    };
    // Refused before any slot is reserved: the client may simply retry.
    let Some(_receiving) = state.try_begin_upload() else { return Refusal::Busy.answer() };
    let mut gate = TokenGate {
        state,
        from_query: query.iter().filter(|(n, _)| n == TOKEN_FIELD).map(|(_, v)| v.clone()).collect(),
        client,
    };
    let limits = state.multipart_limits();
    let stream = upload::body_stream(body, limits.idle_timeout);
    let receipt =
        upload::receive(stream, &boundary, &limits, &*state.objects, &state.spool_dir(), &mut gate).await;
    let Some(mut permit) = receipt.permit else {
        return match receipt.result {
            Err(ReceiveError::Refused(refusal)) => {
                tracing::info!(?refusal, "redeem refused");
                refusal.answer()
            }
            Err(ReceiveError::Upload(e)) => {
                tracing::info!(error = %e, "redeem body could not be read");
                text(StatusCode::BAD_REQUEST, format!("The upload could not be read: {e}.\n"))
            }
            Ok(_) => unreachable!("the gate opens or refuses once the body is complete"),
        };
    };
    let grant = permit.reservation.grant.clone();
    let (outcome, fields, client_gone) = match receipt.result {
        Ok(received) => {
            // A second token after the file is only seen now.
            let tokens = query.iter().chain(&received.fields).filter(|(n, _)| n == TOKEN_FIELD).count();
            if tokens > 1 {
                if let Some(file) = &received.file {
                    upload::delete_quietly(&*state.objects, &file.stored.key).await;
                }
                give_back(state, &mut permit).await;
                return Refusal::Duplicate.answer();
            }
            (finish(state, &mut permit, received.file).await, received.fields, false)
        }
        Err(ReceiveError::Upload(e)) => {
            give_back(state, &mut permit).await;
            tracing::info!(error = %e, "redeem upload failed; slot given back");
            // A body that breaks the multipart rules or the limits on its
            // fields is the client's bug, not an upload outcome for the site.
            if let UploadError::Malformed(_) | UploadError::TooLarge(_) = e {
                return text(StatusCode::BAD_REQUEST, format!("The upload could not be read: {e}.\n"));
            }
            let gone = matches!(e, UploadError::Interrupted(_));
            (Outcome::Failed { error_message: failure_message(&e) }, Vec::new(), gone)
        }
        Err(ReceiveError::Refused(_)) => unreachable!("a gate that opened does not refuse"),
    };
    drop(permit);
    let extras = query.into_iter().chain(fields).filter(|(n, _)| n != TOKEN_FIELD).collect();
    let data = ReturnData {
        domain: state.config.site.domain.clone(),
        replace_token: grant.token.to_string(),
        outcome,
        extras,
    };
    answer(state, &grant.return_url, grant.background_return, &data, client_gone).await
}

/// Commits the slot with the stored file, or gives it back.
async fn finish(state: &AppState, permit: &mut Permit, file: Option<upload::ReceivedFile>) -> Outcome {
    let Some(file) = file else {
        give_back(state, permit).await;
        return Outcome::Failed { error_message: "No file was included in the request.".into() };
    };
    let key = file.stored.key.clone();
    let size = file.stored.size;
    let committed =
        state.state.commit_version(&permit.reservation, file.into_version(unix_now()), unix_now()).await;
    permit.settled = true;
    match committed {
        Ok(photo) => {
            tracing::info!(photo_id = %photo.photo_id, version = photo.current_version().number, size, "photo replaced");
            Outcome::Replaced {
                photo_id: photo.photo_id.to_string(),
                tree_id: photo.tree_id.clone(),
                token: photo.token.as_str().to_owned(),
            }
        }
        Err(error) => {
            upload::delete_quietly(&*state.objects, &key).await;
            let error_message = match &error {
                CommitError::LeaseLost => "The upload took too long and its slot expired; please try again.",
                CommitError::NoSuchPhoto => "The photo no longer exists.",
                CommitError::Store(_) => "The service is temporarily unavailable; please try again.",
            };
            if !matches!(error, CommitError::LeaseLost) {
                give_back(state, permit).await;
            }
            tracing::warn!(%error, "redeem could not be committed");
            Outcome::Failed { error_message: error_message.into() }
        }
    }
}

/// Gives the permit's slot back, settling it.
async fn give_back(state: &AppState, permit: &mut Permit) {
    permit.settled = true;
    refund(state, &permit.reservation).await;
}

/// Refunds a slot; a failure is logged (the lease returns it in the end).
async fn refund(state: &AppState, reservation: &Reservation) {
    if let Err(e) = state.state.refund_slot(reservation).await {
        tracing::warn!(reservation = %reservation.id, error = %e, "slot refund failed; its lease will expire");
    }
}

fn failure_text(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failed { error_message } => error_message.trim_end_matches('.'),
        Outcome::Replaced { .. } => "",
    }
}

fn failure_message(error: &UploadError) -> String {
    match error {
        UploadError::Storage(_) => "The file could not be stored; please try again.".into(),
        other => format!("The upload failed: {other}."),
    }
}

/// Tells the site and the client how it went.
async fn answer(
    state: &AppState,
    return_url: &Option<String>,
    background: bool,
    data: &ReturnData,
    client_gone: bool,
) -> Response<Body> {
    let return_url = return_url.as_deref().and_then(|u| url::Url::parse(u).ok());
    let Some(return_url) = return_url else {
        return match &data.outcome {
            Outcome::Replaced { .. } => text(StatusCode::OK, "OK\n".into()),
            Outcome::Failed { error_message } => text(StatusCode::BAD_REQUEST, format!("{error_message}\n")),
        };
    };
    if !background {
        return callback::browser_answer(&return_url, data);
    }
    if client_gone {
        // Nobody is waiting for this answer: do not call the site about an
        // upload that was abandoned.
        return text(StatusCode::BAD_REQUEST, callback::background_answer(data, ""));
    }
    let report = state.callbacks.call(&return_url, data).await;
    let result = match &report.result {
        Ok(_) => "ok",
        Err(CallbackError::Forbidden(_)) => "forbidden",
        Err(CallbackError::Timeout) => "timeout",
        Err(CallbackError::Status(_)) => "bad_status",
        Err(_) => "failed",
    };
    state.metrics.callbacks.with_label_values(&[result]).inc();
    match &report.result {
        Ok(status) => {
            tracing::info!(method = %report.method, status = status.as_u16(), "background callback made");
            text(StatusCode::OK, callback::background_answer(data, &report.url))
        }
        Err(e) => {
            tracing::warn!(method = %report.method, error = %e, "background callback failed");
            let stored = matches!(data.outcome, Outcome::Replaced { .. });
            let error_message = if stored {
                format!("The file was stored, but the callback to return_url failed: {e}")
            } else {
                format!("{}; the callback to return_url failed too: {e}", failure_text(&data.outcome))
            };
            text(StatusCode::OK, callback::background_answer(&data.failed(error_message), &report.url))
        }
    }
}
