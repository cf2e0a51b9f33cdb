//! Domain newtypes parsed at the edge: photo ids, browser-upload tokens
//! (replace and upload) and their kinds, secret photo tokens and the random
//! values behind them; 23's permission levels.
//!
//! Every value that arrives from a client is parsed into one of these types
//! before it reaches a store, so the stores never see unchecked strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Fills `buf` from the operating system's CSPRNG.
///
/// The OS generator failing means the machine cannot produce secrets at all;
/// continuing would hand out guessable tokens, so this aborts the request
/// (the panic is caught per connection by hyper's task) rather than degrade.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random generator is unavailable");
    buf
}

/// A random string of `len` characters from `alphabet`, without modulo bias.
pub fn random_string(alphabet: &[u8], len: usize) -> String {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    // Rejection sampling: bytes at or above the largest multiple of the
    // alphabet size are discarded so every character is equally likely.
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for byte in random_bytes::<64>() {
            if (byte as usize) < limit && out.len() < len {
                out.push(alphabet[byte as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// Letters and digits, for secrets that end up in URLs and forms.
pub const ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The numeric id of a photo (or video; 23 calls both "photo").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhotoId(pub u64);

impl fmt::Display for PhotoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A photo id was not a plain positive decimal number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a photo id is a positive decimal number")]
pub struct BadPhotoId;

impl FromStr for PhotoId {
    type Err = BadPhotoId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only ASCII digits: `u64::from_str` would also take a leading `+`.
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadPhotoId);
        }
        match s.parse::<u64>() {
            Ok(0) | Err(_) => Err(BadPhotoId),
            Ok(n) => Ok(PhotoId(n)),
        }
    }
}

/// A replace token: 40 lowercase hex characters, 160 bits from the CSPRNG.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReplaceToken(String);

impl ReplaceToken {
    /// Number of characters in a token.
    pub const LEN: usize = 40;

    /// A fresh token from the operating system's CSPRNG.
    pub fn generate() -> Self {
        ReplaceToken(hex::encode(random_bytes::<20>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Tokens are bearer credentials: logs show only a prefix, enough to correlate.
impl fmt::Debug for ReplaceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplaceToken({}…)", &self.0[..8])
    }
}

impl fmt::Display for ReplaceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two kinds of browser-upload token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Each upload is a new version of one photo.
    Replace,
    /// Each upload is a new photo.
    Upload,
}

impl TokenKind {
    /// The name the stores record.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Replace => "replace",
            TokenKind::Upload => "upload",
        }
    }

    /// The parameter that carries a token of this kind.
    pub fn field(self) -> &'static str {
        match self {
            TokenKind::Replace => "replace_token",
            TokenKind::Upload => "upload_token",
        }
    }
}

/// A string was not a well-formed replace token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a replace token is 40 lowercase hexadecimal characters")]
pub struct BadReplaceToken;

impl FromStr for ReplaceToken {
    type Err = BadReplaceToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed =
            s.len() == Self::LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if well_formed { Ok(ReplaceToken(s.to_owned())) } else { Err(BadReplaceToken) }
    }
}

impl TryFrom<String> for ReplaceToken {
    type Error = BadReplaceToken;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ReplaceToken> for String {
    fn from(token: ReplaceToken) -> String {
        token.0
    }
}

/// The secret token of a photo, the `token` of 23's `photo_id` + `token`
/// access scheme: 32 letters and digits.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhotoSecret(String);

impl PhotoSecret {
    pub fn generate() -> Self {
        PhotoSecret(random_string(ALPHANUMERIC, 32))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PhotoSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PhotoSecret(redacted)")
    }
}

/// 23's permission levels, in ascending order: each level includes the ones
/// below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    None,
    Anonymous,
    Read,
    Write,
    Admin,
    Super,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::None => "none",
            Permission::Anonymous => "anonymous",
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
            Permission::Super => "super",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds since the Unix epoch, the unit of every stored time.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Microseconds since the Unix epoch: an order of events within a second.
pub fn unix_micros() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_ids_are_positive_plain_decimals() {
        assert_eq!("123456".parse(), Ok(PhotoId(123456)));
        for bad in ["", "0", "+1", "-1", "1.0", " 1", "abc", "99999999999999999999"] {
            assert_eq!(bad.parse::<PhotoId>(), Err(BadPhotoId), "{bad:?}");
        }
    }

    #[test]
    fn generated_replace_tokens_are_40_lowercase_hex_and_distinct() {
        let a = ReplaceToken::generate();
        let b = ReplaceToken::generate();
        assert_eq!(a.as_str().len(), 40);
        assert_eq!(a.as_str().parse::<ReplaceToken>(), Ok(a.clone()));
        assert_ne!(a, b);
    }

    #[test]
    fn replace_tokens_reject_uppercase_and_wrong_lengths() {
        assert!("022fe6e3fb42758d6147c539727c5358af3524b1".parse::<ReplaceToken>().is_ok());
        assert!("022FE6E3FB42758D6147C539727C5358AF3524B1".parse::<ReplaceToken>().is_err());
        assert!("022fe6e3".parse::<ReplaceToken>().is_err());
        assert!("g22fe6e3fb42758d6147c539727c5358af3524b1".parse::<ReplaceToken>().is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let token = ReplaceToken::generate();
        assert!(!format!("{token:?}").contains(token.as_str()));
        let secret = PhotoSecret::generate();
        assert!(!format!("{secret:?}").contains(secret.as_str()));
    }

    #[test]
    fn random_strings_use_only_the_alphabet() {
        let s = random_string(b"ab", 100);
        assert_eq!(s.len(), 100);
        assert!(s.bytes().all(|b| b == b'a' || b == b'b'));
    }
}
