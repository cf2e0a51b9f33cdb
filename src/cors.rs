//! CORS for the methods a page on the site's own origin calls directly
//! (the redeems and update-upload-token, from an HTML form's page,
//! Resumable.js, flow.js or Uppy): `server.cors_allowed_origins` lists the
//! origins allowed. Every answer of those methods to an allowed `Origin`,
//! refusals and errors included, carries `Access-Control-Allow-Origin`; a
//! browser that cannot read an answer sees status 0, and Resumable.js
//! retries a permanent refusal a hundred times. The preflight `OPTIONS` is
//! answered here.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::http::{Body, empty};

/// The methods a preflight may ask for.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH";
/// How long a browser may keep a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_SECS: &str = "3600";

/// The configured origins, normalised (`*` allows any).
#[derive(Clone, Debug, Default)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    pub fn new(origins: &[String]) -> Self {
        AllowedOrigins(origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect())
    }

    /// The request's `Origin` when it is allowed: the value to send back.
    fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        self.0.iter().any(|allowed| allowed == "*" || *allowed == text).then(|| origin.clone())
    }

    /// Adds the CORS headers to `response` when the request's origin is allowed.
    pub fn decorate(&self, request: &HeaderMap, response: &mut Response<Body>) {
        let headers = response.headers_mut();
        // Caches must not hand one origin's answer to another.
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = self.allowed(request) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
    }

    /// The answer to a preflight `OPTIONS`: `204`, with what the browser
    /// asked for when its origin is allowed (the headers it names are
    /// allowed as named; the libraries send `Content-Type` and their own).
    pub fn preflight(&self, request: &HeaderMap) -> Response<Body> {
        let mut response = empty(StatusCode::NO_CONTENT);
        let headers = response.headers_mut();
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, OPTIONS"));
        // `Access-Control-Allow-Origin` is added with every other answer's.
        if self.allowed(request).is_some() {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS));
            if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                && asked.to_str().is_ok_and(is_header_list)
            {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
        }
        response
    }
}

/// A comma-separated list of header names (RFC 9110 tokens).
fn is_header_list(value: &str) -> bool {
    value.split(',').map(str::trim).all(|name| {
        !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers
    }

    #[test]
    fn only_listed_origins_are_allowed_case_insensitively() {
        let origins = AllowedOrigins::new(&["https://www.example.com/".to_owned()]);
        assert!(origins.allowed(&request("https://WWW.example.com")).is_some());
        assert!(origins.allowed(&request("https://evil.example")).is_none());
        assert!(origins.allowed(&HeaderMap::new()).is_none());
        assert!(AllowedOrigins::new(&["*".to_owned()]).allowed(&request("https://any.example")).is_some());
        assert!(AllowedOrigins::default().allowed(&request("https://www.example.com")).is_none());
    }

    #[test]
    fn a_preflight_allows_the_headers_asked_for_when_they_are_header_names() {
        let origins = AllowedOrigins::new(&["https://www.example.com".to_owned()]);
        let mut asked = request("https://www.example.com");
        asked.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("content-type, x-requested-with"),
        );
        let mut response = origins.preflight(&asked);
        origins.decorate(&asked, &mut response);
        assert_eq!(response.status(), 204);
        let headers = response.headers();
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://www.example.com");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS], "content-type, x-requested-with");
        assert!(headers[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap().contains("PUT"));
        let evil = request("https://evil.example");
        let mut denied = origins.preflight(&evil);
        origins.decorate(&evil, &mut denied);
        assert!(denied.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(denied.headers().get(header::ACCESS_CONTROL_ALLOW_METHODS).is_none());
    }
}
