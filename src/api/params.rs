//! The parameters every token method shares: `return_url`,
//! `background_return_p`, `valid_minutes` and `max_uploads`, each with its
//! rule, and the URL checks behind `return_url` and `absolute_url`.

use crate::auth::Caller;
use crate::context::Context;
use crate::domain::{ReplaceToken, unix_now};
use crate::error::ApiError;
use crate::http::Params;
use crate::store::{TokenGrant, TokenPurpose};

/// `valid_minutes`: default and bounds, from 23's documentation.
pub const VALID_MINUTES: IntegerRule =
    IntegerRule { name: "valid_minutes", default: 180, min: 15, max: 1440 };
/// `max_uploads`: default and bounds.
pub const MAX_UPLOADS: IntegerRule = IntegerRule { name: "max_uploads", default: 1, min: 1, max: 100 };

/// An optional integer parameter that is clamped into its range.
pub struct IntegerRule {
    name: &'static str,
    default: u32,
    min: u32,
    max: u32,
}

impl IntegerRule {
    /// Absent or empty: the default. An integer (any sign, any size): clamped
    /// into `min..=max`. Anything else (`1.5`, `ten`, ` 5`): `invalid_input`.
    pub fn apply(&self, value: Option<&str>) -> Result<u32, ApiError> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(self.default);
        };
        let (negative, digits) = match value.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, value.strip_prefix('+').unwrap_or(value)),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::InvalidInput(format!("{} must be an integer", self.name)));
        }
        if negative {
            return Ok(self.min);
        }
        // More significant digits than any u32 has: certainly above the maximum.
        let significant = digits.trim_start_matches('0');
        let n: u64 = if significant.len() > 10 { u64::MAX } else { significant.parse().unwrap_or(0) };
        Ok(n.clamp(u64::from(self.min), u64::from(self.max)) as u32)
    }
}

/// `return_url`: absent or empty means none. Otherwise an absolute `http`
/// or `https` URL (see [`absolute_http_url`]) within the length limit, on
/// an allowed host when the operator configured a list. The URL is kept
/// exactly as given.
pub fn parse_return_url(value: Option<&str>, ctx: &Context) -> Result<Option<String>, ApiError> {
    let Some(raw) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let config = &ctx.config.callback;
    let url = absolute_http_url("return_url", raw, config.max_return_url_bytes)?;
    if !ctx.callbacks.allowed_hosts().permits(url.host_str().unwrap_or_default()) {
        return Err(ApiError::InvalidInput("return_url names a host that is not allowed".into()));
    }
    Ok(Some(raw.to_owned()))
}

/// An absolute `http` or `https` URL with a host, no credentials, no
/// whitespace or control characters, at most `max_bytes` long; refused
/// (`invalid_input` naming the parameter) otherwise.
pub fn absolute_http_url(name: &str, raw: &str, max_bytes: usize) -> Result<url::Url, ApiError> {
    let invalid = |why: &str| Err(ApiError::InvalidInput(format!("{name} {why}")));
    if raw.len() > max_bytes {
        return invalid(&format!("is longer than {max_bytes} bytes"));
    }
    // The URL parser would silently drop tabs and newlines; refuse them.
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return invalid("contains whitespace or control characters");
    }
    // The URL parser forgives `http:///host` and backslashes, as browsers
    // do; a URL given here must say exactly what it means, so refuse them.
    let authority_follows = ["http://", "https://"].iter().any(|prefix| {
        raw.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
            && !raw[prefix.len()..].starts_with('/')
    });
    if !authority_follows || raw.contains('\\') {
        return invalid("must be an absolute http:// or https:// URL");
    }
    let Ok(url) = url::Url::parse(raw) else {
        return invalid("is not an absolute URL");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return invalid("must be an http or https URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return invalid("has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return invalid("must not contain credentials");
    }
    Ok(url)
}

pub fn flag(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.single(name)? {
        None | Some("") | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(_) => Err(ApiError::InvalidInput(format!("{name} must be 0 or 1"))),
    }
}

/// The longest Resumable.js file identifier kept.
pub const MAX_FILE_IDENTIFIER_BYTES: usize = 255;

/// A `resumableIdentifier`, checked: at most 255 bytes, no control
/// characters. The message names the rule.
pub fn file_identifier(raw: &str) -> Result<&str, String> {
    if raw.len() > MAX_FILE_IDENTIFIER_BYTES || raw.chars().any(char::is_control) {
        return Err(format!(
            "resumableIdentifier must be at most {MAX_FILE_IDENTIFIER_BYTES} bytes, without control characters"
        ));
    }
    Ok(raw)
}

/// The terms of a token as the issuing request gives them.
pub struct TokenTerms {
    pub return_url: Option<String>,
    pub background_return: bool,
    pub valid_minutes: u32,
    pub max_uploads: u32,
    pub issued_at: u64,
}

impl TokenTerms {
    pub fn from_params(params: &Params, ctx: &Context) -> Result<TokenTerms, ApiError> {
        Ok(TokenTerms {
            return_url: parse_return_url(params.single("return_url")?, ctx)?,
            background_return: flag(params, "background_return_p")?,
            valid_minutes: VALID_MINUTES.apply(params.single("valid_minutes")?)?,
            max_uploads: MAX_UPLOADS.apply(params.single("max_uploads")?)?,
            issued_at: unix_now(),
        })
    }

    pub fn valid_until(&self) -> u64 {
        self.issued_at + u64::from(self.valid_minutes) * 60
    }

    /// A new token with these terms, for `purpose`, issued to `caller`.
    pub fn grant(&self, purpose: TokenPurpose, caller: &Caller) -> TokenGrant {
        TokenGrant {
            token: ReplaceToken::generate(),
            purpose,
            max_uploads: self.max_uploads,
            issued_at: self.issued_at,
            valid_until: self.valid_until(),
            return_url: self.return_url.clone(),
            background_return: self.background_return,
            issued_to: caller.consumer_key.clone().unwrap_or_default(),
        }
    }

    /// The answer's fields that follow the token's own.
    pub fn fields(&self) -> [(String, String); 4] {
        [
            ("max_uploads".into(), self.max_uploads.to_string()),
            ("valid_minutes".into(), self.valid_minutes.to_string()),
            ("valid_until".into(), self.valid_until().to_string()),
            ("return_url".into(), self.return_url.clone().unwrap_or_default()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_clamped_and_non_integers_refused() {
        let cases = [
            (None, Ok(180)),
            (Some(""), Ok(180)),
            (Some("60"), Ok(60)),
            (Some("1"), Ok(15)),
            (Some("-5"), Ok(15)),
            (Some("0"), Ok(15)),
            (Some("100000"), Ok(1440)),
            (Some("99999999999999999999999999"), Ok(1440)),
            (Some("+30"), Ok(30)),
            (Some("1.5"), Err(())),
            (Some("ten"), Err(())),
            (Some(" 5"), Err(())),
            (Some("-"), Err(())),
        ];
        for (input, expected) in cases {
            let got = VALID_MINUTES.apply(input).map_err(|_| ());
            assert_eq!(got, expected, "{input:?}");
        }
    }
}
