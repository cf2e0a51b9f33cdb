//! The OAuth `Authorization` header parser and the base-string normaliser:
//! never a panic; percent-encoding round-trips and uses only unreserved
//! characters and `%XX`; normalisation does not depend on parameter order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload_receiver::auth::signature;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = signature::is_oauth_header(text);
    if let Ok(params) = signature::parse_authorization_header(text) {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let forward = signature::normalized_parameters(pairs.iter().copied());
        let backward = signature::normalized_parameters(pairs.iter().rev().copied());
        assert_eq!(forward, backward, "normalisation sorts");
        let base = signature::base_string("POST", &signature::base_string_uri("http", "h", "/p"), &forward);
        let _ = signature::sign(&base, "cs", "ts");
    }
    let encoded = signature::encode(text);
    assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{encoded}");
    let decoded = url::form_urlencoded::parse(format!("k={}", encoded.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    assert_eq!(decoded, text, "percent-encoding round-trips");
    // Authority and path pieces from the input: never a panic.
    let (authority, path) = text.split_once('/').unwrap_or((text, ""));
    let _ = signature::base_string_uri("https", authority, &format!("/{path}"));
});
