//! An API method call, from request to 23 envelope: parameters from the
//! query and a form body, the OAuth 1.0a check at the method's level, the
//! handler, and the rendering in the requested format.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::auth::{Caller, SignedRequest};
use crate::context::Context;
use crate::domain::{Permission, unix_now};
use crate::envelope::{self, Format, Success};
use crate::error::ApiError;
use crate::http::{Body, BodyKind, ClientView, Params, body_kind, mark_private, query_params, read_form};

/// An authenticated API call, handed to a handler.
pub struct ApiRequest {
    pub params: Params,
    pub caller: Caller,
    /// The multipart body and its boundary, when the request has one.
    pub multipart: Option<(Incoming, String)>,
}

/// An API method's handler. A multipart handler appends the body's text
/// fields to the parameters (they may choose the answer's format).
pub trait Handler: for<'a> AsyncFnOnce(&'a Context, &'a mut ApiRequest) -> Result<Success, ApiError> {}

impl<H> Handler for H where
    H: for<'a> AsyncFnOnce(&'a Context, &'a mut ApiRequest) -> Result<Success, ApiError>
{
}

/// The outcome of an API call whose HTTP status is always 200: `ok` or the
/// 23 error code. Carried from rendering to the request metrics.
#[derive(Clone, Copy)]
pub struct ApiOutcome(pub &'static str);

/// Authenticates the request, requires `required`, runs `handler` and
/// renders its result.
pub async fn api_call(
    ctx: &Context,
    request: Request<Incoming>,
    peer: SocketAddr,
    required: Permission,
    handler: impl Handler,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = query_params(&parts.uri);
    let view = ClientView::of(&parts.headers, &parts.uri, peer, &ctx.config.server.trusted_proxies);

    let mut params = Params::new(query.clone());
    let mut caller = Caller::anonymous();
    let outcome = async {
        let (form, multipart) = match body_kind(&parts.method, &parts.headers)? {
            BodyKind::Form => {
                let limit = ctx.config.limits.max_form_bytes;
                (read_form(body, &parts.headers, limit, ctx.body_idle_timeout()).await?, None)
            }
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
        caller = ctx.auth.authenticate(&signed, unix_now()).await?;
        if caller.permission < required {
            return Err(ApiError::PermissionDenied { required });
        }
        let mut call = ApiRequest { params: std::mem::take(&mut params), caller: caller.clone(), multipart };
        let result = handler(ctx, &mut call).await;
        params = call.params;
        result
    }
    .await;
    render(ctx, &path, &params, caller.permission, outcome)
}

fn render(
    ctx: &Context,
    endpoint: &str,
    params: &Params,
    permission: Permission,
    outcome: Result<Success, ApiError>,
) -> Response<Body> {
    let (format, format_error) = Format::from_params(|name| params.first(name));
    let envelope_ctx = envelope::Context { permission, site: &ctx.config.site, endpoint };
    let (body, code) = match format_error.map_or(outcome, Err) {
        Ok(success) => (envelope::render_success(&format, &envelope_ctx, &success), "ok"),
        Err(error) => {
            error.log();
            (envelope::render_error(&format, &envelope_ctx, &error), error.code())
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.extensions_mut().insert(ApiOutcome(code));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    // Signed answers carry tokens.
    mark_private(headers);
    response
}
