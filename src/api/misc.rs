//! `/api/echo`, the Flash cross-domain policies, the load balancer's health
//! checks and the metrics.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::call::ApiRequest;
use crate::context::Context;
use crate::envelope::{Success, xml_escape};
use crate::error::ApiError;
use crate::http::{Body, plain};

/// `/api/echo`: mirrors every parameter except the OAuth ones.
pub async fn echo(_: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let fields = request
        .params
        .iter()
        .filter(|(name, _)| !name.starts_with("oauth_"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    Ok(Success { message: "Echo".to_owned(), object_name: "echo", fields, list: None, lists: Vec::new() })
}

/// How long `/readyz` waits for each backend.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// `/readyz`: 200 when both stores answer, 503 naming the one that does not
/// (or when the process is draining for shutdown).
pub async fn readyz(ctx: &Context) -> Response<Body> {
    if ctx.is_shutting_down() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let (state_ok, objects_ok) = tokio::join!(
        tokio::time::timeout(READINESS_TIMEOUT, ctx.state.ping()),
        tokio::time::timeout(READINESS_TIMEOUT, ctx.objects.ping()),
    );
    match (state_ok, objects_ok) {
        (Ok(Ok(())), Ok(Ok(()))) => plain(StatusCode::OK, "ready\n"),
        (state_result, _) if !matches!(state_result, Ok(Ok(()))) => {
            tracing::warn!(result = ?state_result, "readiness: state store not reachable");
            plain(StatusCode::SERVICE_UNAVAILABLE, "not ready: state store unreachable\n")
        }
        (_, objects_result) => {
            tracing::warn!(result = ?objects_result, "readiness: object store not reachable");
            plain(StatusCode::SERVICE_UNAVAILABLE, "not ready: object store unreachable\n")
        }
    }
}

/// `/metrics`: every metric in the Prometheus text format.
pub fn metrics(ctx: &Context) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

fn xml(body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/x-cross-domain-policy"));
    response
}

const POLICY_HEAD: &str = "<?xml version=\"1.0\"?>\n<!DOCTYPE cross-domain-policy SYSTEM \
\"http://www.adobe.com/xml/dtds/cross-domain-policy.dtd\">\n<cross-domain-policy>\n";

/// `/crossdomain.xml`: grants nothing itself, but lets Flash load the
/// policy under `/api/`.
pub fn crossdomain_root() -> Response<Body> {
    xml(format!(
        "{POLICY_HEAD}  <site-control permitted-cross-domain-policies=\"all\"/>\n</cross-domain-policy>\n"
    ))
}

/// `/api/crossdomain.xml`: grants the configured domains.
pub fn crossdomain_api(domains: &[String]) -> Response<Body> {
    let mut body = POLICY_HEAD.to_owned();
    for domain in domains {
        body.push_str(&format!("  <allow-access-from domain=\"{}\"/>\n", xml_escape(domain)));
    }
    body.push_str("</cross-domain-policy>\n");
    xml(body)
}
