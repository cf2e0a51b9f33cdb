//! Request and response helpers shared by every endpoint: parameters in
//! arrival order, how the client addressed us (believing forwarded headers
//! only from trusted proxies), what the body holds, reading a bounded form
//! body or a streamed one, and the plain responses.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::error::ApiError;

/// Every response body is small and built in memory.
pub type Body = Full<Bytes>;

/// A `text/plain` response with a fixed text.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A plain, unstyled text answer that no cache keeps.
pub fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    mark_private(headers);
    response
}

/// A response with no body.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Answers that carry tokens or reflect the request are never cached by a
/// proxy, and never sniffed into another content type by a browser.
pub fn mark_private(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
}

/// `405 Method Not Allowed` naming the methods that are.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Request parameters in arrival order (query, then body fields).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Params(pairs)
    }

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

/// The client's address: the peer, or what trusted proxies forwarded.
pub fn client_address(headers: &HeaderMap, peer: SocketAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    ClientView::of(headers, &http::Uri::default(), peer, trusted).address
}

/// How the client addressed us, believing forwarded headers only from
/// trusted proxies.
pub struct ClientView {
    pub scheme: String,
    pub authority: String,
    pub address: IpAddr,
}

impl ClientView {
    pub fn of(headers: &HeaderMap, uri: &http::Uri, peer: SocketAddr, trusted: &[ipnet::IpNet]) -> Self {
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

/// What the body of a request holds.
pub enum BodyKind {
    None,
    Form,
    /// `multipart/form-data`, with its boundary.
    Multipart(String),
}

/// What the body of a request holds, from its method and content type.
pub fn body_kind(method: &Method, headers: &HeaderMap) -> Result<BodyKind, ApiError> {
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

/// The request body as a stream of data chunks that fails with `TimedOut`
/// when no chunk arrives within `idle_timeout`.
pub fn body_stream<B>(
    body: B,
    idle_timeout: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        loop {
            match tokio::time::timeout(idle_timeout, body.frame()).await {
                Err(_) => {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body was idle too long",
                    );
                    return Some((Err(error), None));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e.into())), None)),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Some((Ok(data), Some(body))),
                    // Trailers carry no file bytes.
                    Err(_) => continue,
                },
            }
        }
    })
}

/// Reads a form-urlencoded body of at most `limit` bytes, refusing a larger
/// one as soon as its size is known (from `Content-Length`, or on the chunk
/// that crosses the limit) without reading the rest.
pub async fn read_form<B>(
    body: B,
    headers: &HeaderMap,
    limit: u64,
    idle_timeout: Duration,
) -> Result<Vec<(String, String)>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large =
        || ApiError::InvalidInput(format!("the form body exceeds {limit} bytes (limits.max_form_bytes)"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut stream = std::pin::pin!(body_stream(body, idle_timeout));
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
pub fn parse_urlencoded(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// The request's query string, decoded.
pub fn query_params(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query().map(|q| parse_urlencoded(q.as_bytes())).unwrap_or_default()
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
    fn duplicate_parameters_are_refused_by_single() {
        let params = Params(vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert!(params.single("a").is_err());
        assert_eq!(params.first("a"), Some("1"));
        assert_eq!(params.single("b").unwrap(), None);
    }
}
