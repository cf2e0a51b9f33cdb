//! The Redis store's key names, all under the configured prefix.

use crate::domain::{PhotoId, ReplaceToken};
use crate::store::NonceKey;

/// Key names, all under the configured prefix.
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    /// The token's hash and its lease set.
    pub(super) fn token(&self, token: &ReplaceToken) -> [String; 2] {
        let hash = format!("{}t:{}", self.prefix, token.as_str());
        [hash.clone(), format!("{hash}:leases")]
    }

    /// The photo's meta record and its version list.
    pub(super) fn photo(&self, id: PhotoId) -> [String; 2] {
        let meta = format!("{}p:{id}", self.prefix);
        [meta.clone(), format!("{meta}:versions")]
    }

    /// A chunked file's hash: per token, the identifier hashed (it is the
    /// client's and may be long or odd).
    pub(super) fn chunked_file(&self, token: &ReplaceToken, identifier: &str) -> String {
        use sha2::Digest;
        let identifier = hex::encode(sha2::Sha256::digest(identifier.as_bytes()));
        format!("{}cf:{}:{identifier}", self.prefix, token.as_str())
    }

    /// Exists while the chunked file gathering under `object_key` is received.
    pub(super) fn live_object(&self, object_key: &str) -> String {
        format!("{}ck:{object_key}", self.prefix)
    }

    /// Exists while reservation `id` is withdrawn (see `withdraw_slot.lua`).
    pub(super) fn withdrawn(&self, id: &str) -> String {
        format!("{}rw:{id}", self.prefix)
    }

    pub(super) fn photo_sequence(&self) -> String {
        format!("{}photo_seq", self.prefix)
    }

    pub(super) fn redeem_failures(&self, client: &str, window: u64) -> String {
        format!("{}f:{client}:{window}", self.prefix)
    }

    pub(super) fn nonce(&self, key: &NonceKey) -> String {
        // Hashed: nonces are client-chosen and may be long or odd.
        use sha2::Digest;
        format!("{}n:{}", self.prefix, hex::encode(sha2::Sha256::digest(key.identity().as_bytes())))
    }
}
