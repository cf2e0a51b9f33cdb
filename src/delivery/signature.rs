//! Signatures of the requests the receiver makes to a site (background
//! callbacks, webhooks): `X-Upload-Receiver-Signature: t=<unix seconds>,v1=<hex>`,
//! `v1` being the lowercase hex HMAC-SHA256, keyed with a secret, of the
//! bytes `{t}.{METHOD}.{URL}.{body}` (the method as sent, the full URL
//! requested with its query, the raw body, empty for a GET).
//!
//! The first of `[callback] signing_secrets` signs; every one of them
//! verifies, so a secret is rotated by putting the new one first, and
//! removing the old one once every site checks with the new one.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header the signature travels in.
pub const HEADER: &str = "x-upload-receiver-signature";

/// How far a signature's time may be from the verifier's clock, by default.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Signs with the first secret, verifies with any.
/// (No `Debug`: it holds the secrets.)
#[derive(Clone, Default)]
pub struct Signer {
    secrets: Vec<String>,
}

/// Why a signature was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not t=<unix seconds>,v1=<hex>")]
    Malformed,
    #[error("the signature was made at {made}, too far from now ({now})")]
    Stale { made: u64, now: u64 },
    #[error("the signature matches none of the secrets")]
    Mismatch,
}

impl Signer {
    pub fn new(secrets: &[String]) -> Self {
        Signer { secrets: secrets.to_vec() }
    }

    /// Whether requests are signed (a secret is configured).
    pub fn signs(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// The header value of a request made at `t`; `None` without a secret.
    pub fn sign(&self, t: u64, method: &str, url: &str, body: &[u8]) -> Option<String> {
        let secret = self.secrets.first()?;
        let v1 = hex::encode(mac(secret, t, method, url, body).finalize().into_bytes());
        Some(format!("t={t},v1={v1}"))
    }

    /// Accepts `header` when one of its `v1` values is the signature of
    /// this request by one of the secrets, made within `tolerance_secs` of
    /// `now`.
    pub fn verify(
        &self,
        header: &str,
        request: (&str, &str, &[u8]),
        now: u64,
        tolerance_secs: u64,
    ) -> Result<(), SignatureError> {
        let (method, url, body) = request;
        let mut t = None;
        let mut signatures = Vec::new();
        for field in header.split(',') {
            match field.trim().split_once('=') {
                Some(("t", value)) => t = Some(value.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
                Some(("v1", value)) => {
                    signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?)
                }
                // Other schemes a later release may add are not ours to judge.
                Some(_) => {}
                None => return Err(SignatureError::Malformed),
            }
        }
        let t = t.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if t.abs_diff(now) > tolerance_secs {
            return Err(SignatureError::Stale { made: t, now });
        }
        let matches = |secret: &String| {
            signatures.iter().any(|given| mac(secret, t, method, url, body).verify_slice(given).is_ok())
        };
        if self.secrets.iter().any(matches) { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

/// The HMAC of one request, before it is finalized.
fn mac(secret: &str, t: u64, method: &str, url: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{t}.{method}.{url}.").as_bytes());
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "site-secret-0123456789";
    const T: u64 = 1_767_225_600;
    const GET_URL: &str = "https://www.example.com/done?photo_id=1&domain=x";

    fn signer(secrets: &[&str]) -> Signer {
        Signer::new(&secrets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn signatures_match_an_independent_hmac_sha256() {
        // Computed with Python's hmac module.
        let get = signer(&[SECRET]).sign(T, "GET", GET_URL, b"").unwrap();
        assert_eq!(get, "t=1767225600,v1=e1723ca184b568e7909c60e0958233544bec9561333d2b3e7a2e50b58e9e61ca");
        let post = signer(&[SECRET]).sign(T, "POST", "https://www.example.com/hook", b"{\"a\":1}").unwrap();
        assert_eq!(post, "t=1767225600,v1=e78e096ea82a9d3cfb4879e11f0d9a2339cb72acbf3cf711e5eec1ebcbbff486");
        assert_eq!(signer(&[]).sign(T, "GET", GET_URL, b""), None, "no secret, no signature");
    }

    #[test]
    fn the_first_secret_signs_and_every_one_verifies() {
        let old = signer(&["old-secret-0123456789"]);
        let rotating = signer(&["new-secret-0123456789", "old-secret-0123456789"]);
        let by_old = old.sign(T, "GET", GET_URL, b"").unwrap();
        let by_new = rotating.sign(T, "GET", GET_URL, b"").unwrap();
        assert_ne!(by_old, by_new, "the new secret signs");
        for header in [&by_old, &by_new] {
            assert_eq!(rotating.verify(header, ("GET", GET_URL, b""), T + 10, 300), Ok(()));
        }
        assert_eq!(old.verify(&by_new, ("GET", GET_URL, b""), T, 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn any_change_to_the_request_or_a_stale_time_is_refused() {
        let s = signer(&[SECRET]);
        let header = s.sign(T, "POST", GET_URL, b"body").unwrap();
        let request = ("POST", GET_URL, &b"body"[..]);
        assert_eq!(s.verify(&header, request, T, 300), Ok(()));
        for changed in [
            ("GET", GET_URL, &b"body"[..]),
            ("POST", "https://www.example.com/done?photo_id=2&domain=x", &b"body"[..]),
            ("POST", GET_URL, &b"bodY"[..]),
        ] {
            assert_eq!(s.verify(&header, changed, T, 300), Err(SignatureError::Mismatch), "{changed:?}");
        }
        assert_eq!(
            s.verify(&header, request, T + 301, 300),
            Err(SignatureError::Stale { made: T, now: T + 301 })
        );
        let moved = header.replace(&format!("t={T}"), &format!("t={}", T + 1));
        assert_eq!(s.verify(&moved, request, T, 300), Err(SignatureError::Mismatch), "the time is signed");
        for malformed in ["", "v1=00", "t=1", "t=x,v1=00", "t=1,v1=zz", "nonsense"] {
            assert_eq!(s.verify(malformed, request, T, 300), Err(SignatureError::Malformed), "{malformed:?}");
        }
    }
}
