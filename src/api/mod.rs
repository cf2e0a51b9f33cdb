//! The HTTP front: request ids, routing, parameter gathering, authentication
//! and rendering. Handlers live in one file per endpoint family and return
//! `Result<Success, ApiError>`; this module turns that into a 23 response.

mod misc;
mod photo;
mod redeem;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::app::AppState;
use crate::auth::{Caller, Permission, SignedRequest};
use crate::domain::{random_bytes, unix_now};
use crate::envelope::{self, Format, Success};
use crate::error::ApiError;

/// Every response body is small and built in memory.
pub type Body = Full<Bytes>;

/// The routes, one per endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Echo,
    PhotoGetReplaceToken,
    PhotoUpload,
    PhotoReplace,
    PhotoRedeemReplaceToken,
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
            Endpoint::CrossdomainRoot | Endpoint::CrossdomainApi => "crossdomain",
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Metrics => "metrics",
        }
    }

    /// The permission an API method requires; `None` for non-API routes.
    fn required_permission(self) -> Option<Permission> {
        match self {
            Endpoint::Echo => Some(Permission::None),
            Endpoint::PhotoGetReplaceToken | Endpoint::PhotoUpload | Endpoint::PhotoReplace => {
                Some(Permission::Write)
            }
            _ => None,
        }
    }
}

/// Serves one request. Never fails: every problem becomes a response.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let request_id = request_id(request.headers());
    let span = tracing::info_span!(
        "request",
        id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        peer = %peer,
    );
    let started = Instant::now();
    let endpoint = Endpoint::from_path(request.uri().path()).map_or("unknown", Endpoint::label);
    let mut response = route(&state, request, peer).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let elapsed = started.elapsed();
    let outcome = match response.extensions().get::<ApiOutcome>() {
        Some(ApiOutcome(code)) => (*code).to_owned(),
        None => response.status().as_u16().to_string(),
    };
    state.metrics.requests.with_label_values(&[endpoint, &outcome]).inc();
    state.metrics.request_seconds.with_label_values(&[endpoint]).observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        let status = response.status().as_u16();
        tracing::info!(status, %outcome, elapsed_ms = elapsed.as_millis() as u64, "answered");
    });
    Ok(response)
}

/// The outcome of an API call whose HTTP status is always 200: `ok` or the
/// 23 error code. Carried from rendering to the request metrics.
#[derive(Clone, Copy)]
struct ApiOutcome(&'static str);

/// The client's `X-Request-Id` when it is a sane token, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| hex::encode(random_bytes::<12>()))
}

async fn route(state: &Arc<AppState>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let Some(endpoint) = Endpoint::from_path(request.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "no such endpoint\n");
    };
    // During a graceful shutdown only the probes and metrics are served;
    // everything else is sent elsewhere (requests already running go on).
    if state.is_shutting_down()
        && !matches!(endpoint, Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics)
    {
        let mut response =
            plain(StatusCode::SERVICE_UNAVAILABLE, "This instance is shutting down; please try again.\n");
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    // The redeem answers in plain text, redirects or forms, not envelopes.
    if endpoint == Endpoint::PhotoRedeemReplaceToken {
        return redeem::handle(state, request, peer).await;
    }
    let is_api = endpoint.required_permission().is_some();
    let allowed = match *request.method() {
        Method::GET | Method::HEAD => true,
        Method::POST => is_api,
        _ => false,
    };
    if !allowed {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        let allow = if is_api { "GET, HEAD, POST" } else { "GET, HEAD" };
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    match endpoint {
        Endpoint::Healthz => plain(StatusCode::OK, "ok\n"),
        Endpoint::Readyz => misc::readyz(state).await,
        Endpoint::Metrics => misc::metrics(state),
        Endpoint::CrossdomainRoot => misc::crossdomain_root(),
        Endpoint::CrossdomainApi => misc::crossdomain_api(&state.config.site.crossdomain_allow),
        _ => api_call(state, endpoint, request, peer).await,
    }
}

/// A `text/plain` response.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Request parameters in arrival order (query, then body fields).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The value of `name`, refusing a parameter given twice.
    pub fn single(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::InvalidInput(format!("{name} is given more than once")));
        }
        Ok(first)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn extend(&mut self, more: impl IntoIterator<Item = (String, String)>) {
        self.0.extend(more);
    }
}

/// An authenticated API call, handed to a handler.
pub struct ApiRequest {
    pub params: Params,
    pub caller: Caller,
    /// The multipart body and its boundary, when the request has one.
    pub multipart: Option<(Incoming, String)>,
    pub peer: IpAddr,
}

/// The client's address: the peer, or what trusted proxies forwarded.
pub(crate) fn client_address(headers: &HeaderMap, peer: SocketAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    ClientView::of(headers, &http::Uri::default(), peer, trusted).address
}

/// How the client addressed us, believing forwarded headers only from
/// trusted proxies.
struct ClientView {
    scheme: String,
    authority: String,
    address: IpAddr,
}

impl ClientView {
    fn of(headers: &HeaderMap, uri: &http::Uri, peer: SocketAddr, trusted: &[ipnet::IpNet]) -> Self {
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
        let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let mut view = ClientView {
            scheme: uri.scheme_str().unwrap_or("http").to_owned(),
            authority: header_text("host")
                .map(str::to_owned)
                .or_else(|| uri.authority().map(|a| a.to_string()))
                .unwrap_or_default(),
            address: peer.ip(),
        };
        if !is_trusted(&peer.ip()) {
            return view;
        }
        // A proxy appends to these lists; the leftmost entry is what the
        // client itself used.
        let first_item = |name: &str| header_text(name).and_then(|v| v.split(',').next()).map(str::trim);
        if let Some(proto) = first_item("x-forwarded-proto").filter(|p| matches!(*p, "http" | "https")) {
            view.scheme = proto.to_owned();
        }
        if let Some(host) = first_item("x-forwarded-host").filter(|h| !h.is_empty()) {
            view.authority = host.to_owned();
        }
        // The client is the rightmost address not added by a trusted proxy.
        if let Some(chain) = header_text("x-forwarded-for") {
            let hops: Vec<IpAddr> = chain.split(',').filter_map(|s| s.trim().parse().ok()).collect();
            if let Some(client) = hops.iter().rev().find(|ip| !is_trusted(ip)).or(hops.first()) {
                view.address = *client;
            }
        }
        view
    }
}

/// What the body of an API request holds.
enum BodyKind {
    None,
    Form,
    Multipart(String),
}

fn body_kind(method: &Method, headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    if method != Method::POST {
        return Ok(BodyKind::None);
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Ok(BodyKind::None);
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "multipart/form-data" => multer::parse_boundary(content_type)
            .ok()
            // RFC 2046: one to seventy characters.
            .filter(|boundary| (1..=70).contains(&boundary.len()))
            .map(BodyKind::Multipart)
            .ok_or_else(|| {
                ApiError::InvalidInput(
                    "the multipart/form-data content type has no usable boundary (1 to 70 characters)".into(),
                )
            }),
        _ => Ok(BodyKind::None),
    }
}

/// Reads a form-urlencoded body of at most `limit` bytes, refusing a larger
/// one as soon as its size is known (from `Content-Length`, or on the chunk
/// that crosses the limit) without reading the rest.
async fn read_form(
    body: Incoming,
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Vec<(String, String)>, ApiError> {
    let limit = state.config.limits.max_form_bytes;
    let too_large = || ApiError::InvalidInput(format!("the form body exceeds {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let idle = std::time::Duration::from_secs(state.config.server.body_idle_timeout_secs);
    let mut stream = std::pin::pin!(crate::upload::body_stream(body, idle));
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidInput(format!("the request body could not be read: {e}")))?;
        if (collected.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(parse_urlencoded(&collected))
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
fn parse_urlencoded(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

async fn api_call(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(|q| parse_urlencoded(q.as_bytes())).unwrap_or_default();
    let view = ClientView::of(&parts.headers, &parts.uri, peer, &state.config.server.trusted_proxies);

    let mut params = Params(query.clone());
    let mut caller = Caller::anonymous();
    let outcome = async {
        let kind = body_kind(&parts.method, &parts.headers)?;
        let (form, multipart) = match kind {
            BodyKind::Form => (read_form(body, &parts.headers, state).await?, None),
            BodyKind::Multipart(boundary) => (Vec::new(), Some((body, boundary))),
            BodyKind::None => (Vec::new(), None),
        };
        params.extend(form.iter().cloned());
        let signed = SignedRequest {
            method: parts.method.as_str(),
            scheme: &view.scheme,
            authority: &view.authority,
            path: &path,
            raw_query: parts.uri.query(),
            query: &query,
            form: &form,
            authorization: parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        };
        caller = state.auth.authenticate(&signed, unix_now()).await?;
        let required = endpoint.required_permission().expect("only API endpoints reach api_call");
        if caller.permission < required {
            return Err(ApiError::PermissionDenied { required });
        }
        let mut call = ApiRequest {
            params: std::mem::take(&mut params),
            caller: caller.clone(),
            multipart,
            peer: view.address,
        };
        let result = match endpoint {
            Endpoint::Echo => misc::echo(&call),
            Endpoint::PhotoGetReplaceToken => photo::get_replace_token(state, &call).await,
            Endpoint::PhotoUpload => photo::upload(state, &mut call).await,
            Endpoint::PhotoReplace => photo::replace(state, &mut call).await,
            _ => unreachable!("non-API endpoints are routed before api_call"),
        };
        // Multipart handlers append the body's fields, which may choose the format.
        params = call.params;
        result
    }
    .await;
    render(state, &path, &params, caller.permission, outcome)
}

fn render(
    state: &AppState,
    endpoint: &str,
    params: &Params,
    permission: Permission,
    outcome: Result<Success, ApiError>,
) -> Response<Body> {
    let (format, format_error) = Format::from_params(|name| params.first(name));
    let ctx = envelope::Context { permission, site: &state.config.site, endpoint };
    let (body, code) = match format_error.map_or(outcome, Err) {
        Ok(success) => (envelope::render_success(&format, &ctx, &success), "ok"),
        Err(error) => {
            error.log();
            (envelope::render_error(&format, &ctx, &error), error.code())
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.extensions_mut().insert(ApiOutcome(code));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // Signed answers carry tokens and must never be cached by a proxy.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(headers: &[(&str, &str)], peer: &str, trusted: &[&str]) -> ClientView {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        ClientView::of(&map, &"/api/echo".parse().unwrap(), peer.parse().unwrap(), &trusted)
    }

    #[test]
    fn forwarded_headers_are_ignored_from_untrusted_peers() {
        let headers = [
            ("host", "internal:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "videos.example.com"),
            ("x-forwarded-for", "203.0.113.9"),
        ];
        let untrusted = view(&headers, "198.51.100.1:5000", &["10.0.0.0/8"]);
        assert_eq!((untrusted.scheme.as_str(), untrusted.authority.as_str()), ("http", "internal:8080"));
        assert_eq!(untrusted.address, "198.51.100.1".parse::<IpAddr>().unwrap());
        let trusted = view(&headers, "10.1.2.3:5000", &["10.0.0.0/8"]);
        assert_eq!((trusted.scheme.as_str(), trusted.authority.as_str()), ("https", "videos.example.com"));
        assert_eq!(trusted.address, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_client_address_skips_trusted_hops_from_the_right() {
        let headers = [("host", "h"), ("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.5")];
        let v = view(&headers, "10.1.2.3:5000", &["10.0.0.0/8"]);
        assert_eq!(v.address, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_generated_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 24);
    }

    #[test]
    fn duplicate_parameters_are_refused_by_single() {
        let params = Params(vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert!(params.single("a").is_err());
        assert_eq!(params.first("a"), Some("1"));
        assert_eq!(params.single("b").unwrap(), None);
    }
}
