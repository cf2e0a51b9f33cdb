//! The HTTP front: request ids, routing and the request metrics. API
//! methods go through [`call`] (authentication, parameters, the 23
//! envelope); the redeem, which answers in plain text, redirects or forms,
//! has its own walk in [`redeem`]. Handlers live in one file per endpoint
//! family.

mod call;
mod list;
mod metadata;
mod misc;
mod params;
mod photo;
mod redeem;
mod token_status;
mod upload_token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::context::Context;
use crate::domain::{Permission, random_bytes};
use crate::http::{Body, method_not_allowed, plain};
use crate::store::TokenKind;

/// The routes, one per endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Echo,
    PhotoGetReplaceToken,
    PhotoUpload,
    PhotoReplace,
    PhotoRedeemReplaceToken,
    PhotoGetUploadToken,
    PhotoRedeemUploadToken,
    PhotoUpdateUploadToken,
    PhotoGetTokenStatus,
    PhotoList,
    CrossdomainRoot,
    CrossdomainApi,
    Healthz,
    Readyz,
    Metrics,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/api/echo" => Endpoint::Echo,
            "/api/photo/get-replace-token" => Endpoint::PhotoGetReplaceToken,
            "/api/photo/upload" => Endpoint::PhotoUpload,
            "/api/photo/replace" => Endpoint::PhotoReplace,
            "/api/photo/redeem-replace-token" => Endpoint::PhotoRedeemReplaceToken,
            "/api/photo/get-upload-token" => Endpoint::PhotoGetUploadToken,
            "/api/photo/redeem-upload-token" => Endpoint::PhotoRedeemUploadToken,
            "/api/photo/update-upload-token" => Endpoint::PhotoUpdateUploadToken,
            "/api/photo/get-token-status" => Endpoint::PhotoGetTokenStatus,
            "/api/photo/list" => Endpoint::PhotoList,
            "/crossdomain.xml" => Endpoint::CrossdomainRoot,
            "/api/crossdomain.xml" => Endpoint::CrossdomainApi,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/metrics" => Endpoint::Metrics,
            _ => return None,
        })
    }

    /// The `endpoint` label of this route's metrics.
    fn label(self) -> &'static str {
        match self {
            Endpoint::Echo => "echo",
            Endpoint::PhotoGetReplaceToken => "get_replace_token",
            Endpoint::PhotoUpload => "upload",
            Endpoint::PhotoReplace => "replace",
            Endpoint::PhotoRedeemReplaceToken => "redeem",
            Endpoint::PhotoGetUploadToken => "get_upload_token",
            Endpoint::PhotoRedeemUploadToken => "redeem_upload",
            Endpoint::PhotoUpdateUploadToken => "update_upload_token",
            Endpoint::PhotoGetTokenStatus => "get_token_status",
            Endpoint::PhotoList => "photo_list",
            Endpoint::CrossdomainRoot | Endpoint::CrossdomainApi => "crossdomain",
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Metrics => "metrics",
        }
    }

    /// Whether pages call this route from scripts on other origins, so
    /// that its answers carry CORS headers (see [`crate::cors`]).
    fn speaks_cors(self) -> bool {
        matches!(
            self,
            Endpoint::PhotoRedeemReplaceToken
                | Endpoint::PhotoRedeemUploadToken
                | Endpoint::PhotoUpdateUploadToken
        )
    }

    /// The permission an API method requires; `None` for non-API routes.
    fn required_permission(self) -> Option<Permission> {
        match self {
            Endpoint::Echo | Endpoint::PhotoUpdateUploadToken => Some(Permission::None),
            Endpoint::PhotoList | Endpoint::PhotoGetTokenStatus => Some(Permission::Read),
            Endpoint::PhotoGetReplaceToken
            | Endpoint::PhotoGetUploadToken
            | Endpoint::PhotoUpload
            | Endpoint::PhotoReplace => Some(Permission::Write),
            _ => None,
        }
    }
}

/// Serves one request. Never fails: every problem becomes a response.
pub async fn handle(ctx: Arc<Context>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let request_id = request_id(request.headers());
    let span = tracing::info_span!(
        "request",
        id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        peer = %peer,
    );
    let started = Instant::now();
    let route_of = Endpoint::from_path(request.uri().path());
    let endpoint = route_of.map_or("unknown", Endpoint::label);
    // What a CORS answer needs of the request, kept before it is consumed.
    let cors_request = route_of.filter(|e| e.speaks_cors()).map(|_| request.headers().clone());
    let mut response = route(&ctx, request, peer).instrument(span.clone()).await;
    if let Some(headers) = &cors_request {
        ctx.cors.decorate(headers, &mut response);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let elapsed = started.elapsed();
    let outcome = match response.extensions().get::<call::ApiOutcome>() {
        Some(call::ApiOutcome(code)) => (*code).to_owned(),
        None => response.status().as_u16().to_string(),
    };
    ctx.metrics.requests.with_label_values(&[endpoint, &outcome]).inc();
    ctx.metrics.request_seconds.with_label_values(&[endpoint]).observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        let status = response.status().as_u16();
        tracing::info!(status, %outcome, elapsed_ms = elapsed.as_millis() as u64, "answered");
    });
    response
}

/// The client's `X-Request-Id` when it is a sane token, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| hex::encode(random_bytes::<12>()))
}

async fn route(ctx: &Context, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let Some(endpoint) = Endpoint::from_path(request.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "no such endpoint\n");
    };
    // During a graceful shutdown only the probes and metrics are served;
    // everything else is sent elsewhere (requests already running go on).
    if ctx.is_shutting_down() && !matches!(endpoint, Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics)
    {
        let mut response =
            plain(StatusCode::SERVICE_UNAVAILABLE, "This instance is shutting down; please try again.\n");
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    if request.method() == Method::OPTIONS && endpoint.speaks_cors() {
        return ctx.cors.preflight(request.headers());
    }
    // The redeems answer in plain text, redirects or forms, not envelopes.
    let redeem_kind = match endpoint {
        Endpoint::PhotoRedeemReplaceToken => Some(TokenKind::Replace),
        Endpoint::PhotoRedeemUploadToken => Some(TokenKind::Upload),
        _ => None,
    };
    if let Some(kind) = redeem_kind {
        return redeem::handle(ctx, request, peer, kind).await;
    }
    let is_api = endpoint.required_permission().is_some();
    let allowed = match *request.method() {
        Method::GET | Method::HEAD => true,
        Method::POST => is_api,
        _ => false,
    };
    if !allowed {
        return method_not_allowed(if is_api { "GET, HEAD, POST" } else { "GET, HEAD" });
    }
    match endpoint {
        Endpoint::Healthz => plain(StatusCode::OK, "ok\n"),
        Endpoint::Readyz => misc::readyz(ctx).await,
        Endpoint::Metrics => misc::metrics(ctx),
        Endpoint::CrossdomainRoot => misc::crossdomain_root(),
        Endpoint::CrossdomainApi => misc::crossdomain_api(&ctx.config.site.crossdomain_allow),
        Endpoint::Echo => api_call(ctx, endpoint, request, peer, misc::echo).await,
        Endpoint::PhotoGetReplaceToken => {
            api_call(ctx, endpoint, request, peer, photo::get_replace_token).await
        }
        Endpoint::PhotoUpload => api_call(ctx, endpoint, request, peer, photo::upload).await,
        Endpoint::PhotoReplace => api_call(ctx, endpoint, request, peer, photo::replace).await,
        Endpoint::PhotoGetUploadToken => {
            api_call(ctx, endpoint, request, peer, upload_token::get_upload_token).await
        }
        Endpoint::PhotoUpdateUploadToken => {
            api_call(ctx, endpoint, request, peer, upload_token::update_upload_token).await
        }
        Endpoint::PhotoList => api_call(ctx, endpoint, request, peer, list::list).await,
        Endpoint::PhotoGetTokenStatus => {
            api_call(ctx, endpoint, request, peer, token_status::get_token_status).await
        }
        Endpoint::PhotoRedeemReplaceToken | Endpoint::PhotoRedeemUploadToken => {
            unreachable!("the redeems are routed above")
        }
    }
}

/// An API method: authenticated at the endpoint's level, answered in the envelope.
async fn api_call(
    ctx: &Context,
    endpoint: Endpoint,
    request: Request<Incoming>,
    peer: SocketAddr,
    handler: impl call::Handler,
) -> Response<Body> {
    let required = endpoint.required_permission().expect("only API methods have handlers");
    call::api_call(ctx, request, peer, required, handler).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_generated_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 24);
    }
}
