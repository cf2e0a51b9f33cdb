//! Telling the site how a redeem went: the return data added to
//! `return_url`, the browser answer (a `303` or an auto-submitting POST form),
//! and the background callback the receiver makes itself for Flash-style
//! clients.
//!
//! Nothing from the request reaches a header or the HTML unescaped: URLs are
//! built by the `url` crate (which percent-encodes), HTML attribute values
//! are escaped, and the extra parameters can never replace the ones the
//! receiver sets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use url::Url;

use crate::delivery::signature::{self, Signer};
use crate::domain::{random_bytes, unix_now};
use crate::envelope::xml_escape;

/// A return URL with its parameters below this many characters is reached
/// with GET; at or above it, with a POST form.
pub const GET_LIMIT: usize = 1500;

pub use crate::return_data::{Outcome, RESERVED, ReturnData};

/// `return_url` with `params` appended to its own query (its fragment kept).
pub fn url_with(return_url: &Url, params: &[(String, String)]) -> Url {
    let mut url = return_url.clone();
    if !params.is_empty() {
        url.query_pairs_mut().extend_pairs(params);
    }
    url
}

/// How the return data reaches `return_url`.
enum Delivery {
    /// In the URL's query, when the whole URL is under [`GET_LIMIT`].
    Get(Url),
    /// As a form-urlencoded POST to the return URL itself.
    Post(Vec<(String, String)>),
}

/// GET when the URL with the parameters is short enough, else POST: the
/// one rule for browsers and background callbacks alike.
fn delivery(return_url: &Url, data: &ReturnData) -> Delivery {
    let params = data.params();
    let with_params = url_with(return_url, &params);
    if with_params.as_str().len() < GET_LIMIT { Delivery::Get(with_params) } else { Delivery::Post(params) }
}

/// The URL a background callback of `data` requests (see [`BackgroundCaller::call`]).
pub fn callback_url(return_url: &Url, data: &ReturnData) -> String {
    match delivery(return_url, data) {
        Delivery::Get(url) => as_requested(&url).to_string(),
        Delivery::Post(_) => as_requested(return_url).to_string(),
    }
}

/// `[callback] allowed_hosts`, lowercased: the hosts a return URL may name
/// and that callbacks may reach at any address. An empty list lists none
/// and permits every host.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    pub fn new(hosts: &[String]) -> Self {
        AllowedHosts(hosts.iter().map(|h| h.to_ascii_lowercase()).collect())
    }

    /// Whether `host` is on the list.
    pub fn lists(&self, host: &str) -> bool {
        self.0.iter().any(|allowed| allowed.eq_ignore_ascii_case(host))
    }

    /// Whether a return URL may name `host`.
    pub fn permits(&self, host: &str) -> bool {
        self.0.is_empty() || self.lists(host)
    }
}

/// The answer for a browser: a `303 See Other` to the return URL with the
/// parameters when it is short enough for a GET, else a page that POSTs
/// them there (by script at once, or by its button without scripts).
pub fn browser_answer(return_url: &Url, data: &ReturnData) -> Response<Full<Bytes>> {
    match delivery(return_url, data) {
        Delivery::Get(target) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::SEE_OTHER;
            let location =
                HeaderValue::from_str(target.as_str()).expect("a serialized URL is a valid header value");
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Delivery::Post(params) => post_form_page(return_url, &params),
    }
}

fn post_form_page(return_url: &Url, params: &[(String, String)]) -> Response<Full<Bytes>> {
    let nonce = hex::encode(random_bytes::<16>());
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Returning to the site</title></head>\n<body>\n",
    );
    html.push_str(&format!(
        "<form id=\"return\" method=\"post\" action=\"{}\">\n",
        xml_escape(return_url.as_str())
    ));
    for (name, value) in params {
        html.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
            xml_escape(name),
            xml_escape(value)
        ));
    }
    html.push_str("<p>The upload is finished.</p>\n<button type=\"submit\">Continue</button>\n</form>\n");
    html.push_str(&format!(
        "<script nonce=\"{nonce}\">document.getElementById(\"return\").submit();</script>\n</body></html>\n"
    ));
    let mut response = Response::new(Full::new(Bytes::from(html)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    crate::http::mark_private(headers);
    // Only our own inline script runs, and the form may only go where the
    // site asked to be returned to.
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; form-action {}; base-uri 'none'; frame-ancestors 'none'",
        return_url.origin().ascii_serialization()
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&policy).expect("an origin is a valid header value"),
    );
    response
}

/// The plain-text answer of a background redeem:
/// `ok <domain> <tree_id> <photo_id> <token> <callback_url>` or
/// `error <error_message>`.
pub fn background_answer(data: &ReturnData, callback_url: &str) -> String {
    match &data.outcome {
        Outcome::Stored { photo_id, tree_id, token } => {
            format!("ok {} {tree_id} {photo_id} {token} {callback_url}\n", data.domain)
        }
        Outcome::Failed { error_message } => format!("error {}\n", single_line(error_message)),
    }
}

fn single_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Why a background callback did not get a 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("the callback host is not allowed: {0}")]
    Forbidden(String),
    #[error("the callback host could not be resolved: {0}")]
    Resolve(String),
    #[error("the callback could not connect: {0}")]
    Connect(String),
    #[error("the callback failed: {0}")]
    Request(String),
    #[error("the callback timed out")]
    Timeout,
    #[error("the callback was answered {0}")]
    Status(StatusCode),
}

/// What a background callback did.
#[derive(Debug)]
pub struct CallbackReport {
    /// `GET` with the parameters in the URL, or `POST` with a form body.
    pub method: Method,
    /// The URL requested (with the parameters, for a GET).
    pub url: String,
    pub result: Result<StatusCode, CallbackError>,
}

/// Makes background callbacks with the SSRF rules of the configuration:
/// with no allow-list any host, but public addresses only; with a list only
/// the listed hosts, at whatever address they resolve to. The name is
/// resolved once and that address is the one connected to; redirects are
/// never followed; the answer is read up to a cap; the whole call is bounded
/// by a timeout.
pub struct BackgroundCaller {
    allowed_hosts: AllowedHosts,
    timeout: Duration,
    tls: tokio_rustls::TlsConnector,
    signer: Signer,
    webhook_signer: Signer,
}

/// How much of a callback's answer is read (it is only logged).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl BackgroundCaller {
    /// Each callback is signed by `signer` (when it has a secret), each
    /// webhook request by `webhook_signer`.
    pub fn new(allowed_hosts: &[String], timeout: Duration, signer: Signer, webhook_signer: Signer) -> Self {
        let roots = tokio_rustls::rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        BackgroundCaller {
            allowed_hosts: AllowedHosts::new(allowed_hosts),
            timeout,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            signer,
            webhook_signer,
        }
    }

    /// The hosts return URLs may name.
    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.allowed_hosts
    }

    /// Calls `return_url` with the return data: GET when the URL with the
    /// parameters is under [`GET_LIMIT`] characters, else POST.
    pub async fn call(&self, return_url: &Url, data: &ReturnData) -> CallbackReport {
        let (method, url, body) = match delivery(return_url, data) {
            Delivery::Get(url) => (Method::GET, as_requested(&url), None),
            Delivery::Post(params) => {
                let form =
                    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
                (Method::POST, as_requested(return_url), Some((FORM, form.into_bytes())))
            }
        };
        self.send(&self.signer, method, url, body).await
    }

    /// POSTs `json` to the webhook `url`, with the same rules.
    pub async fn post_json(&self, url: &Url, json: Vec<u8>) -> CallbackReport {
        self.send(&self.webhook_signer, Method::POST, as_requested(url), Some((JSON, json))).await
    }

    /// Makes one request signed by `signer`, within the timeout.
    async fn send(
        &self,
        signer: &Signer,
        method: Method,
        url: Url,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> CallbackReport {
        let (content_type, body) = body.map_or((None, Vec::new()), |(kind, bytes)| (Some(kind), bytes));
        let signature = signer.sign(unix_now(), method.as_str(), url.as_str(), &body);
        let request = Outgoing { method: &method, url: &url, content_type, body, signature };
        let result = match tokio::time::timeout(self.timeout, self.request(request)).await {
            Ok(result) => result,
            Err(_) => Err(CallbackError::Timeout),
        };
        CallbackReport { method, url: url.to_string(), result }
    }

    async fn request(&self, request: Outgoing<'_>) -> Result<StatusCode, CallbackError> {
        let url = request.url;
        let address = self.resolve(url).await?;
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| CallbackError::Connect(format!("{address}: {e}")))?;
        let host = url.host_str().unwrap_or_default();
        if url.scheme() == "https" {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| CallbackError::Connect(e.to_string()))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| CallbackError::Connect(e.to_string()))?;
            exchange(tls, request).await
        } else {
            exchange(tcp, request).await
        }
    }

    /// The one address to connect to, if the rules allow it.
    async fn resolve(&self, url: &Url) -> Result<SocketAddr, CallbackError> {
        let host = url.host().ok_or_else(|| CallbackError::Forbidden("no host".into()))?;
        let port = url.port_or_known_default().ok_or_else(|| CallbackError::Forbidden("no port".into()))?;
        let listed = self.allowed_hosts.lists(&host.to_string());
        if !self.allowed_hosts.permits(&host.to_string()) {
            return Err(CallbackError::Forbidden(host.to_string()));
        }
        let addresses: Vec<SocketAddr> = match host {
            url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            url::Host::Domain(name) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| CallbackError::Resolve(format!("{name}: {e}")))?
                .collect(),
        };
        let first = *addresses.first().ok_or_else(|| CallbackError::Resolve("no address".into()))?;
        // Without an allow-list every address the name has must be public:
        // a name that also points inside must not be usable as a way in.
        if !listed {
            if let Some(inside) = addresses.iter().find(|a| !is_public(a.ip())) {
                return Err(CallbackError::Forbidden(format!("{host} resolves to {}", inside.ip())));
            }
        }
        Ok(first)
    }
}

/// The URL a request goes to, as it is requested and signed: without user
/// information or a fragment (neither is sent).
fn as_requested(url: &Url) -> Url {
    let mut url = url.clone();
    url.set_fragment(None);
    // Only URLs that cannot have user information refuse; they have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// The content types of the receiver's request bodies.
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// One request of the receiver's: its body (empty for a GET) and its
/// signature header, if it is signed.
struct Outgoing<'a> {
    method: &'a Method,
    url: &'a Url,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    signature: Option<String>,
}

/// Sends one HTTP/1.1 request on `io` and reads the status (and a capped
/// amount of the answer, which is discarded).
async fn exchange<IO>(io: IO, request: Outgoing<'_>) -> Result<StatusCode, CallbackError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let request_error = |e: hyper::Error| CallbackError::Request(e.to_string());
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(request_error)?;
    let driver = tokio::spawn(connection);
    let Outgoing { method, url, content_type, body, signature } = request;
    let mut target = url.path().to_owned();
    if let Some(query) = url.query() {
        target.push('?');
        target.push_str(query);
    }
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(target)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, concat!("upload-receiver/", env!("CARGO_PKG_VERSION")));
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(signature) = signature {
        builder = builder.header(signature::HEADER, signature);
    }
    let request =
        builder.body(Full::new(Bytes::from(body))).map_err(|e| CallbackError::Request(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(request_error)?;
    let status = response.status();
    let mut body = response.into_body();
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            _ => break,
        }
    }
    driver.abort();
    if status.is_success() { Ok(status) } else { Err(CallbackError::Status(status)) }
}

/// Whether `ip` is an ordinary public unicast address: not loopback,
/// private, link-local (which holds the cloud metadata address), CGNAT,
/// unspecified, multicast, broadcast, documentation, benchmarking or
/// reserved; IPv4-mapped and NAT64 IPv6 addresses are judged by their IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || ip.to_ipv4().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(outcome: Outcome, extras: &[(&str, &str)]) -> ReturnData {
        ReturnData {
            domain: "videos.example.com".into(),
            token: ("replace_token".to_owned(), "t".repeat(40)),
            outcome,
            extras: extras.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn extras_never_replace_the_receivers_parameters() {
        let d = data(
            Outcome::Stored { photo_id: "1".into(), tree_id: "2".into(), token: "s".into() },
            &[("photo_id", "666"), ("domain", "evil"), ("error_message", "x"), ("theme", "green")],
        );
        let params = d.params();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["domain", "replace_token", "photo_id", "tree_id", "token", "theme"]);
        assert_eq!(params[2].1, "1");
    }

    #[test]
    fn parameters_join_the_urls_own_query_encoded() {
        let url = Url::parse("http://www.example.com/cb?theme=green#top").unwrap();
        let d = data(Outcome::Failed { error_message: "bad\r\nLocation: x <b>\"".into() }, &[]);
        let out = url_with(&url, &d.params()).to_string();
        assert!(
            out.starts_with("http://www.example.com/cb?theme=green&domain=videos.example.com&replace_token=")
        );
        assert!(out.ends_with("#top"));
        assert!(!out.contains('\r') && !out.contains('\n') && !out.contains('<') && !out.contains('"'));
    }

    #[tokio::test]
    async fn the_post_form_escapes_everything_it_reflects() {
        let url = Url::parse("http://www.example.com/cb").unwrap();
        let evil = "\"><script>alert(1)</script>";
        let d = data(Outcome::Failed { error_message: evil.into() }, &[(evil, evil)]);
        let response = post_form_page(&url, &d.params());
        let html = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(html.to_vec()).unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert_eq!(html.matches("<script").count(), 1);
    }

    #[test]
    fn only_ordinary_public_addresses_are_public() {
        for blocked in [
            "127.0.0.1",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "64:ff9b::7f00:1",
            "2001:db8::1",
            "ff02::1",
        ] {
            assert!(!is_public(blocked.parse().unwrap()), "{blocked}");
        }
        for allowed in
            ["8.8.8.8", "93.184.216.34", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
        {
            assert!(is_public(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn the_background_answer_has_the_documented_shape() {
        let ok =
            data(Outcome::Stored { photo_id: "7".into(), tree_id: "3".into(), token: "s3cr3t".into() }, &[]);
        assert_eq!(background_answer(&ok, "http://x/cb"), "ok videos.example.com 3 7 s3cr3t http://x/cb\n");
        let failed = data(Outcome::Failed { error_message: "too\nbig".into() }, &[]);
        assert_eq!(background_answer(&failed, "http://x/cb"), "error too big\n");
    }
}
