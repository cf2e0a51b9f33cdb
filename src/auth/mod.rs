//! OAuth 1.0a request verification: who is calling, at what permission level.
//!
//! A request with no OAuth parameters is `anonymous`. A signed request is
//! checked in this order: parameter syntax and duplicates, signature method,
//! timestamp window, credential lookup, signature (constant-time), and last
//! the nonce, so that only correctly signed requests can fill the nonce store.
//!
//! # Tolerated client departures from RFC 5849
//! Each tolerance is another base string tried with the same secret, so none
//! of them lets an unsigned or differently signed request through:
//! - PEAR's HTTP_OAuth (23's PHP sample) decodes a POST's query with
//!   `rawurldecode`, so a literal `+` in the query is signed as `%2B`
//!   rather than as a space;
//! - the same library keeps an explicit default port (`:80`) in the base
//!   string URI, where the RFC drops it.
//!
//! OAuth parameters may be split between the header and a form body (the
//! Ruby `oauth` gem sends `oauth_verifier` in the body); a name given twice,
//! in one place or across places, is refused.

pub mod credentials;
pub mod signature;

use std::sync::Arc;

pub use credentials::{Credential, Credentials, Secret};

use crate::domain::Permission;
use crate::store::{NonceKey, StateStore, StoreError};

/// Why a request's signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, stale, replayed or wrong OAuth parameters; the
    /// reason is safe to show the client.
    #[error("{0}")]
    Refused(String),
    /// The nonce store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The parts of an HTTP request that enter its signature.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// `http` or `https`, as the client saw it.
    pub scheme: &'a str,
    /// `host[:port]`, as the client saw it.
    pub authority: &'a str,
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub raw_query: Option<&'a str>,
    /// The query, decoded as `application/x-www-form-urlencoded`.
    pub query: &'a [(String, String)],
    /// A form-urlencoded body, decoded; empty for any other body.
    pub form: &'a [(String, String)],
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub permission: Permission,
    /// The consumer key of a signed request.
    pub consumer_key: Option<String>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller { permission: Permission::Anonymous, consumer_key: None }
    }
}

/// Longest accepted `oauth_nonce`.
const MAX_NONCE_LEN: usize = 255;

fn refuse(reason: &str) -> AuthError {
    AuthError::Refused(reason.to_owned())
}

/// Verifies OAuth 1.0a HMAC-SHA1 signatures against the configured sets.
pub struct Authenticator {
    credentials: Credentials,
    window_secs: u64,
    store: Arc<dyn StateStore>,
}

impl Authenticator {
    pub fn new(credentials: Credentials, window_secs: u64, store: Arc<dyn StateStore>) -> Self {
        Authenticator { credentials, window_secs, store }
    }

    /// The caller of `request` at time `now` (Unix seconds).
    pub async fn authenticate(&self, request: &SignedRequest<'_>, now: u64) -> Result<Caller, AuthError> {
        let header = match request.authorization {
            Some(value) if signature::is_oauth_header(value) => {
                signature::parse_authorization_header(value).map_err(|e| refuse(&e.to_string()))?
            }
            _ => Vec::new(),
        };
        let oauth = OAuthParams::collect(&header, request.query, request.form)?;
        if oauth.is_empty() {
            return Ok(Caller::anonymous());
        }
        let method = oauth.required("oauth_signature_method")?;
        if method != "HMAC-SHA1" {
            return Err(refuse("only the HMAC-SHA1 signature method is supported"));
        }
        if oauth.get("oauth_version").is_some_and(|v| v != "1.0") {
            return Err(refuse("oauth_version must be 1.0"));
        }
        let consumer_key = oauth.required("oauth_consumer_key")?;
        let signature_value = oauth.required("oauth_signature")?;
        let nonce = oauth.required("oauth_nonce")?;
        if nonce.len() > MAX_NONCE_LEN || nonce.chars().any(char::is_control) {
            return Err(refuse("oauth_nonce is malformed"));
        }
        let timestamp = parse_timestamp(oauth.required("oauth_timestamp")?)?;
        if timestamp.abs_diff(now) > self.window_secs {
            return Err(refuse("oauth_timestamp is outside the accepted window; check the client's clock"));
        }
        let token = oauth.get("oauth_token").unwrap_or("");

        let credential = self.credentials.find(consumer_key, token);
        // An unknown key still costs one HMAC, so response times do not tell
        // which consumer keys exist.
        let (consumer_secret, token_secret) = match credential {
            Some(c) => (c.consumer_secret.expose(), c.access_token_secret.expose()),
            None => ("unknown-consumer", "unknown-token"),
        };
        let verified = base_strings(request, &header).iter().fold(false, |ok, base| {
            signature::verify(base, consumer_secret, token_secret, signature_value) | ok
        });
        let credential = match credential {
            Some(c) if verified => c,
            Some(_) => return Err(refuse("the signature does not match the request")),
            None => return Err(refuse("unknown consumer key or access token")),
        };

        let key = NonceKey {
            consumer_key: consumer_key.to_owned(),
            token: token.to_owned(),
            nonce: nonce.to_owned(),
            timestamp,
        };
        // The nonce must stay recorded for as long as its timestamp is
        // accepted: until `timestamp + window` has passed.
        let first_use = self.store.first_use_of_nonce(&key, timestamp + self.window_secs + 1).await?;
        if !first_use {
            return Err(refuse("this oauth_nonce was already used"));
        }
        Ok(Caller { permission: credential.permission, consumer_key: Some(credential.consumer_key.clone()) })
    }
}

/// `oauth_timestamp`: exactly ten ASCII digits (Unix seconds until 2286).
fn parse_timestamp(s: &str) -> Result<u64, AuthError> {
    if s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_err(|_| refuse("oauth_timestamp is malformed"))
    } else {
        Err(refuse("oauth_timestamp must be ten digits of Unix time"))
    }
}

/// The `oauth_*` parameters of a request, each at most once.
struct OAuthParams<'a>(Vec<(&'a str, &'a str)>);

impl<'a> OAuthParams<'a> {
    fn collect(
        header: &'a [(String, String)],
        query: &'a [(String, String)],
        form: &'a [(String, String)],
    ) -> Result<Self, AuthError> {
        let mut found: Vec<(&str, &str)> = Vec::new();
        for (name, value) in header.iter().chain(query).chain(form) {
            if !name.starts_with("oauth_") {
                continue;
            }
            if found.iter().any(|(n, _)| n == name) {
                return Err(refuse(&format!("{name} is given more than once")));
            }
            found.push((name, value));
        }
        Ok(OAuthParams(found))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn required(&self, name: &str) -> Result<&'a str, AuthError> {
        self.get(name).filter(|v| !v.is_empty()).ok_or_else(|| refuse(&format!("{name} is missing")))
    }
}

/// The base strings a correctly signed request may have been signed over:
/// the RFC's, then the tolerated variants (see the module docs).
fn base_strings(request: &SignedRequest<'_>, header: &[(String, String)]) -> Vec<String> {
    let build = |uri: &str, query: &[(String, String)]| {
        let params = header.iter().chain(query).chain(request.form).map(|(n, v)| (n.as_str(), v.as_str()));
        signature::base_string(request.method, uri, &signature::normalized_parameters(params))
    };
    let uri = signature::base_string_uri(request.scheme, request.authority, request.path);
    let mut candidates = vec![build(&uri, request.query)];
    if let Some(raw) = request.raw_query.filter(|q| q.contains('+')) {
        candidates.push(build(&uri, &decode_query_keeping_plus(raw)));
    }
    let literal_uri = format!(
        "{}://{}{}",
        request.scheme.to_ascii_lowercase(),
        request.authority.to_ascii_lowercase(),
        request.path
    );
    if literal_uri != uri {
        candidates.push(build(&literal_uri, request.query));
    }
    candidates
}

/// Decodes a query with `%XX` escapes only, `+` kept as a plus.
fn decode_query_keeping_plus(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            (decode(name), decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_must_be_ten_digits() {
        assert_eq!(parse_timestamp("1700000000").unwrap(), 1_700_000_000);
        for bad in ["170000000", "17000000000", "+700000000", "1.70000000", ""] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn duplicate_oauth_parameters_are_refused_across_places() {
        let header = vec![("oauth_nonce".to_owned(), "a".to_owned())];
        let query = vec![("oauth_nonce".to_owned(), "b".to_owned())];
        assert!(OAuthParams::collect(&header, &query, &[]).is_err());
        assert!(OAuthParams::collect(&[], &[], &[]).unwrap().is_empty());
    }

    #[test]
    fn query_plus_signs_can_be_kept_literally() {
        assert_eq!(
            decode_query_keeping_plus("b=x+y&c=%20"),
            vec![("b".into(), "x+y".into()), ("c".into(), " ".into())]
        );
    }
}
