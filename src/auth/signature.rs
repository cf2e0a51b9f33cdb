//! OAuth 1.0a HMAC-SHA1 signatures (RFC 5849 §3.4), as pure functions.
//!
//! Nothing here touches the network, the clock or a store: these functions
//! parse the `Authorization` header, build the signature base string and
//! compute or verify a signature, and are tested against the RFC's and 23's
//! worked examples.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Everything but RFC 3986's unreserved characters (ALPHA, DIGIT, `-._~`).
const OAUTH_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// RFC 5849 §3.6 percent-encoding (uppercase hex, unreserved set kept).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, OAUTH_ENCODE).to_string()
}

/// A problem with the `Authorization: OAuth` header's syntax.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("malformed OAuth Authorization header near {0:?}")]
    Malformed(String),
    #[error("a parameter value in the OAuth Authorization header is not valid percent-encoded UTF-8")]
    BadEncoding,
}

/// Whether an `Authorization` header value uses the `OAuth` scheme.
pub fn is_oauth_header(value: &str) -> bool {
    // `get`: a value whose fifth byte is inside a character is not OAuth
    // (and must not panic).
    value.get(..5).is_some_and(|scheme| scheme.eq_ignore_ascii_case("oauth"))
        && value[5..].chars().next().is_none_or(|c| c == ' ' || c == '\t')
}

/// Parses `OAuth realm="x", oauth_consumer_key="k", ...` (RFC 5849 §3.5.1)
/// into decoded name/value pairs, `realm` excluded. Duplicates are kept so the
/// caller can refuse them.
pub fn parse_authorization_header(value: &str) -> Result<Vec<(String, String)>, HeaderError> {
    if !is_oauth_header(value) {
        return Err(HeaderError::Malformed(truncate(value)));
    }
    let rest = value[5..].trim();
    let mut params = Vec::new();
    if rest.is_empty() {
        return Ok(params);
    }
    for item in rest.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (name, quoted) = item.split_once('=').ok_or_else(|| HeaderError::Malformed(truncate(item)))?;
        let name = name.trim();
        let quoted = quoted.trim();
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .filter(|inner| !inner.contains('"'))
            .ok_or_else(|| HeaderError::Malformed(truncate(item)))?;
        if name.eq_ignore_ascii_case("realm") {
            continue;
        }
        let name = decode_strict(name)?;
        let value = decode_strict(inner)?;
        params.push((name, value));
    }
    Ok(params)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Percent-decodes a header value; `+` stays a plus (this is not a form).
fn decode_strict(s: &str) -> Result<String, HeaderError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| HeaderError::BadEncoding)
}

/// The base string URI (RFC 5849 §3.4.1.2): lowercase scheme and host, the
/// port only when it is not the scheme's default, the path without query.
pub fn base_string_uri(scheme: &str, authority: &str, path: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    let authority = match default_port {
        Some(port) if authority.ends_with(port) && !authority.ends_with(']') => {
            &authority[..authority.len() - port.len()]
        }
        _ => authority.as_str(),
    };
    let path = if path.is_empty() { "/" } else { path };
    format!("{scheme}://{authority}{path}")
}

/// The normalized request parameters (RFC 5849 §3.4.1.3.2): every pair but
/// `oauth_signature`, encoded, sorted by name then value, joined.
pub fn normalized_parameters<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut encoded: Vec<(String, String)> = params
        .into_iter()
        .filter(|(name, _)| *name != "oauth_signature")
        .map(|(name, value)| (encode(name), encode(value)))
        .collect();
    encoded.sort();
    let mut out = String::new();
    for (i, (name, value)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The signature base string (RFC 5849 §3.4.1.1).
pub fn base_string(method: &str, base_uri: &str, normalized_params: &str) -> String {
    format!("{}&{}&{}", encode(&method.to_ascii_uppercase()), encode(base_uri), encode(normalized_params))
}

fn keyed_mac(consumer_secret: &str, token_secret: &str) -> HmacSha1 {
    let key = format!("{}&{}", encode(consumer_secret), encode(token_secret));
    HmacSha1::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length")
}

/// The base64 HMAC-SHA1 signature of `base_string`.
pub fn sign(base_string: &str, consumer_secret: &str, token_secret: &str) -> String {
    let mut mac = keyed_mac(consumer_secret, token_secret);
    mac.update(base_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` (base64, as sent) is the HMAC-SHA1 of `base_string`.
/// The comparison is constant-time; a signature that is not base64 fails.
pub fn verify(base_string: &str, consumer_secret: &str, token_secret: &str, signature: &str) -> bool {
    let Ok(claimed) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut mac = keyed_mac(consumer_secret, token_secret);
    mac.update(base_string.as_bytes());
    mac.verify_slice(&claimed).is_ok()
}

/// Signs `url` for `method` and returns it with the OAuth parameters added
/// to its query: a ready-to-use signed URL, for the `sign` command.
pub fn signed_url(
    method: &str,
    url: &url::Url,
    keys: (&str, &str),
    secrets: (&str, &str),
    timestamp: u64,
    nonce: &str,
) -> String {
    let (consumer_key, token) = keys;
    let timestamp = timestamp.to_string();
    let mut params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    params.extend(
        [
            ("oauth_consumer_key", consumer_key),
            ("oauth_token", token),
            ("oauth_nonce", nonce),
            ("oauth_timestamp", timestamp.as_str()),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_version", "1.0"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned())),
    );
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let base = base_string(
        method,
        &base_string_uri(url.scheme(), &authority, url.path()),
        &normalized_parameters(params.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
    );
    params.push(("oauth_signature".to_owned(), sign(&base, secrets.0, secrets.1)));
    let query: Vec<String> = params.iter().map(|(n, v)| format!("{}={}", encode(n), encode(v))).collect();
    let mut signed = url.clone();
    signed.set_query(Some(&query.join("&")));
    signed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_that_are_not_oauth_are_refused_without_a_panic() {
        // Found by the `oauth_params` fuzz target: an empty value panicked.
        for value in ["", "OAut", "oaut\u{e9}", "oaut\u{e9} oauth_nonce=\"n\"", "Basic abc"] {
            assert!(!is_oauth_header(value), "{value:?}");
            assert!(parse_authorization_header(value).is_err(), "{value:?}");
        }
        assert!(parse_authorization_header("OAuth").unwrap().is_empty());
    }

    /// RFC 5849 §3.4.1.1's example request, signed with the §1.2 secrets.
    #[test]
    fn rfc5849_example_base_string_and_signature() {
        let params = [
            ("b5", "=%3D"),
            ("a3", "a"),
            ("c@", ""),
            ("a2", "r b"),
            ("oauth_consumer_key", "9djdj82h48djs9d2"),
            ("oauth_token", "kkk9d7dh3k39sjv7"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "137131201"),
            ("oauth_nonce", "7d8f3e4a"),
            ("c2", ""),
            ("a3", "2 q"),
        ];
        let normalized = normalized_parameters(params);
        assert_eq!(
            normalized,
            "a2=r%20b&a3=2%20q&a3=a&b5=%3D%253D&c%40=&c2=&oauth_consumer_key=9djdj82h48djs9d2\
             &oauth_nonce=7d8f3e4a&oauth_signature_method=HMAC-SHA1&oauth_timestamp=137131201\
             &oauth_token=kkk9d7dh3k39sjv7"
        );
        let uri = base_string_uri("HTTP", "EXAMPLE.COM:80", "/request");
        assert_eq!(uri, "http://example.com/request");
        let base = base_string("post", &uri, &normalized);
        assert!(base.starts_with("POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q"));
    }

    /// RFC 5849 §1.2: the photos example, token credentials request.
    #[test]
    fn rfc5849_photos_example_signature_verifies() {
        let params = [
            ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
            ("oauth_token", "nnch734d00sl2jdk"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "137131202"),
            ("oauth_nonce", "chapoH"),
            ("file", "vacation.jpg"),
            ("size", "original"),
        ];
        let base = base_string(
            "GET",
            &base_string_uri("http", "photos.example.net", "/photos"),
            &normalized_parameters(params),
        );
        assert_eq!(sign(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00"), "MdpQcU8iPSUjWoN/UDMsK2sui9I=");
        assert!(verify(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00", "MdpQcU8iPSUjWoN/UDMsK2sui9I="));
        assert!(!verify(&base, "kd94hf93k423kf44", "wrong", "MdpQcU8iPSUjWoN/UDMsK2sui9I="));
        assert!(!verify(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00", "not base64!"));
    }

    const CONSUMER_SECRET_23: &str = "u5pHMUpV8wB7LxwieAnrexE8CkzoZTVs6G626KKqfPVqFp0TxT";

    fn base_23(method: &str, uri: &str, params: &[(&str, &str)]) -> String {
        base_string(method, uri, &normalized_parameters(params.iter().copied()))
    }

    /// 23's OAuth page, step 1 (request token). The printed base string
    /// carries another nonce and timestamp than the printed header; the
    /// printed signature belongs to the header's values.
    #[test]
    fn the_23_request_token_example_verifies() {
        let common = [
            ("oauth_callback", "http://my.example.com/callback"),
            ("oauth_consumer_key", "571156-cuQla8tP5tzjf70znIwS"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_version", "1.0"),
        ];
        let uri = "http://api.visualplatform.net/oauth/request_token";
        let mut printed = common.to_vec();
        printed
            .extend([("oauth_nonce", "eb6cf9e826b6a99e6c4998bb9605f994"), ("oauth_timestamp", "1267547723")]);
        assert_eq!(
            base_23("GET", uri, &printed),
            "GET&http%3A%2F%2Fapi.visualplatform.net%2Foauth%2Frequest_token&oauth_callback%3Dhttp%253A%252\
             F%252Fmy.example.com%252Fcallback%26oauth_consumer_key%3D571156-cuQla8tP5tzjf70znIwS%26oauth_n\
             once%3Deb6cf9e826b6a99e6c4998bb9605f994%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp\
             %3D1267547723%26oauth_version%3D1.0"
        );
        let mut header = common.to_vec();
        header
            .extend([("oauth_nonce", "48e12d7291d99b0416f3bb30a9d2ea72"), ("oauth_timestamp", "1267547746")]);
        assert!(verify(
            &base_23("GET", uri, &header),
            CONSUMER_SECRET_23,
            "",
            "ozL65XeaXv4LHnJ6y3Q8H/5tERI="
        ));
    }

    /// 23's OAuth page, step 3 (access token, signed with the request token secret).
    #[test]
    fn the_23_access_token_example_verifies() {
        let base = base_23(
            "GET",
            "http://api.visualplatform.net/oauth/access_token",
            &[
                ("oauth_consumer_key", "571156-cuQla8tP5tzjf70znIwS"),
                ("oauth_nonce", "936dff7fa3d5674b1eb5c217ce6701b3"),
                ("oauth_signature_method", "HMAC-SHA1"),
                ("oauth_timestamp", "1267547767"),
                ("oauth_token", "12-8vr9EplGHHR8Ciem8SLu"),
                ("oauth_verifier", "z3pjUoZU6KN8B5n4V2Fy"),
                ("oauth_version", "1.0"),
            ],
        );
        assert_eq!(
            base,
            "GET&http%3A%2F%2Fapi.visualplatform.net%2Foauth%2Faccess_token&oauth_consumer_key%3D571156-cuQ\
             la8tP5tzjf70znIwS%26oauth_nonce%3D936dff7fa3d5674b1eb5c217ce6701b3%26oauth_signature_method%3D\
             HMAC-SHA1%26oauth_timestamp%3D1267547767%26oauth_token%3D12-8vr9EplGHHR8Ciem8SLu%26oauth_verif\
             ier%3Dz3pjUoZU6KN8B5n4V2Fy%26oauth_version%3D1.0"
        );
        let request_token_secret = "qQptayCQG1ZQYbS73FE6WdNz4wKjYJqcvLzI9DjGD1UKP9wruL";
        assert!(verify(&base, CONSUMER_SECRET_23, request_token_secret, "vFb0a6CGy6rtXeuEfZlhOHvjhjk="));
    }

    /// 23's OAuth page, step 4 (an API call with a form body).
    #[test]
    fn the_23_api_call_example_verifies() {
        let base = base_23(
            "POST",
            &base_string_uri("http", "v.23video.com", "/api/photo/list"),
            &[
                ("format", "xml"),
                ("oauth_consumer_key", "571156-cuQla8tP5tzjf70znIwS"),
                ("oauth_nonce", "a666b90c2339a866c8ed405e3e2821c3"),
                ("oauth_signature_method", "HMAC-SHA1"),
                ("oauth_timestamp", "1267547771"),
                ("oauth_token", "3-gnS3NKP74AzcJsvbFi3Z"),
                ("oauth_version", "1.0"),
            ],
        );
        assert_eq!(
            base,
            "POST&http%3A%2F%2Fv.23video.com%2Fapi%2Fphoto%2Flist&format%3Dxml%26oauth_consumer_key%3D57115\
             6-cuQla8tP5tzjf70znIwS%26oauth_nonce%3Da666b90c2339a866c8ed405e3e2821c3%26oauth_signature_meth\
             od%3DHMAC-SHA1%26oauth_timestamp%3D1267547771%26oauth_token%3D3-gnS3NKP74AzcJsvbFi3Z%26oauth_v\
             ersion%3D1.0"
        );
        let access_token_secret = "83x7n5rR2eT1IV0zLNptvxxy1R3WFptGozka38tDtLZmSDYboW";
        assert!(verify(&base, CONSUMER_SECRET_23, access_token_secret, "R6etDqoM8JLzuXK+3BiVeXCEqRQ="));
    }

    /// The vector requests-oauthlib produced (TESTING.md): a POST whose
    /// query and form body are both signed, the port kept.
    #[test]
    fn the_oauthlib_reference_vector_verifies() {
        let base = base_23(
            "POST",
            &base_string_uri("http", "127.0.0.1:8088", "/upload"),
            &[
                ("a", "1"),
                ("b", "x y"),
                ("resumableChunkNumber", "1"),
                ("oauth_consumer_key", "ck_consumer_key"),
                ("oauth_token", "tk_token"),
                ("oauth_nonce", "abc123nonce"),
                ("oauth_timestamp", "1700000000"),
                ("oauth_signature_method", "HMAC-SHA1"),
                ("oauth_version", "1.0"),
            ],
        );
        assert_eq!(sign(&base, "cs_consumer_secret", "ts_token_secret"), "SnRHjYqvWmFRT1Lb8v2vsMmpivk=");
    }

    #[test]
    fn default_ports_are_dropped_and_others_kept() {
        assert_eq!(base_string_uri("https", "Host:443", "/a"), "https://host/a");
        assert_eq!(base_string_uri("http", "host:8080", "/a"), "http://host:8080/a");
        assert_eq!(base_string_uri("https", "host:80", "/a"), "https://host:80/a");
        assert_eq!(base_string_uri("http", "[::1]", ""), "http://[::1]/");
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("a b+c~d-e.f_g*h'"), "a%20b%2Bc~d-e.f_g%2Ah%27");
        assert_eq!(encode("æ"), "%C3%A6");
    }

    #[test]
    fn authorization_header_is_parsed_without_realm() {
        let params = parse_authorization_header(
            "OAuth realm=\"http://x/\", oauth_consumer_key=\"k%20y\",oauth_nonce=\"n\"",
        )
        .unwrap();
        assert_eq!(
            params,
            vec![("oauth_consumer_key".into(), "k y".into()), ("oauth_nonce".into(), "n".into())]
        );
        assert!(parse_authorization_header("OAuth oauth_nonce=n").is_err());
        assert!(parse_authorization_header("OAuth oauth_nonce=\"a\"b\"").is_err());
        assert!(is_oauth_header("oauth a=\"b\""));
        assert!(!is_oauth_header("OAuthx"));
        assert!(!is_oauth_header("Basic abc"));
    }
}
