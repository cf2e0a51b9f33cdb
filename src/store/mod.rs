//! Shared state: photos, browser-upload tokens (replace and upload) and
//! their upload slots, OAuth nonces.
//!
//! [`StateStore`] speaks in domain operations, never in keys, so each backend
//! can make every operation atomic on its own: the embedded store runs each in
//! one redb write transaction; a Redis store runs each as one Lua script. The
//! backend is chosen once at start-up and shared as `Arc<dyn StateStore>`.
//!
//! # Slot accounting
//! A token grants `max_uploads` uploads. An upload first *reserves* a slot
//! (before any byte is stored), then either *commits* it together with the new
//! photo version or *refunds* it. A reservation carries a lease: if the
//! instance holding it dies, the slot returns to the token when the lease
//! runs out, so a crash never loses a slot for good. An upload that outlives
//! its lease renews it. At every instant
//! `committed + live reservations <= max_uploads`, whatever the concurrency.

pub mod chunked;
pub mod deliveries;
pub mod delivery_queue;
pub mod embedded;
pub mod events;
pub mod outbox;
pub mod redis;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::causes::BoxError;
pub use crate::domain::TokenKind;
pub use deliveries::Outbox;

use crate::domain::{PhotoId, PhotoSecret, ReplaceToken};

/// A failure of the backend itself (I/O, corruption, unreachable server),
/// with its cause kept for the logs. Domain outcomes (unknown token, used
/// up, …) are not errors of this type.
#[derive(Debug)]
pub struct StoreError(BoxError);

impl StoreError {
    pub fn new(cause: impl Into<BoxError>) -> Self {
        StoreError(cause.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state store: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    // The cause's own text is in this error's; its causes come next.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The file behind a photo version: what the object store reported, plus
/// what the client said of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFile {
    /// The object store key; built by the receiver, never from client input.
    pub object_key: String,
    pub size: u64,
    pub content_type: String,
    /// Lowercase hex SHA-256 of the stored bytes, for a file received in
    /// one request; empty for one received in chunks.
    #[serde(default)]
    pub sha256: String,
    /// Lowercase hex CRC-64/NVME of the stored bytes, for a file received
    /// in chunks (combined from its chunks' without reading it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    /// The file name the client gave, for display only; never used in a key.
    pub original_filename: Option<String>,
    pub created_at: u64,
}

impl VersionFile {
    /// The checksum recorded, as `algorithm:hex`.
    pub fn checksum(&self) -> String {
        match &self.crc64nvme {
            Some(crc) => format!("crc64nvme:{crc}"),
            None => format!("sha256:{}", self.sha256),
        }
    }
}

/// One version of a photo. The store assigns the number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoVersion {
    /// 1 for the original upload, then 2, 3, … for each replacement.
    pub number: u32,
    #[serde(flatten)]
    pub file: VersionFile,
}

/// A photo (or video) and every version it has had: its record (which it
/// reads through to: `photo.photo_id`) and its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Photo {
    #[serde(flatten)]
    pub record: PhotoRecord,
    /// Oldest first; never empty. The last one is the current version.
    pub versions: Vec<PhotoVersion>,
}

/// What a site says of a photo, already cleaned for display. Records
/// written before a field existed read it as its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoMetadata {
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// As the site gave them (23: space-separated).
    #[serde(default)]
    pub tags: Option<String>,
    /// Whether the photo is published; 23's default is yes.
    #[serde(default = "published")]
    pub publish: bool,
    #[serde(default)]
    pub album_id: Option<String>,
    /// The user an upload token named (`user_id`, given only by `super`).
    #[serde(default)]
    pub user_id: Option<String>,
    /// A canonical address other than the site's own for the photo.
    #[serde(default)]
    pub absolute_url: Option<String>,
}

fn published() -> bool {
    true
}

impl Default for PhotoMetadata {
    fn default() -> Self {
        PhotoMetadata {
            title: None,
            description: None,
            tags: None,
            publish: true,
            album_id: None,
            user_id: None,
            absolute_url: None,
        }
    }
}

/// The metadata `update-upload-token` may change; only the fields given
/// are `Some` (and serialized), and only those change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album_id: Option<String>,
}

impl MetadataUpdate {
    pub fn apply_to(&self, metadata: &mut PhotoMetadata) {
        let set = |field: &mut Option<String>, value: &Option<String>| {
            if let Some(value) = value {
                *field = Some(value.clone());
            }
        };
        set(&mut metadata.title, &self.title);
        set(&mut metadata.description, &self.description);
        set(&mut metadata.tags, &self.tags);
        set(&mut metadata.album_id, &self.album_id);
        if let Some(publish) = self.publish {
            metadata.publish = publish;
        }
    }

    /// Drops the fields `later` gives: a later change of the same fields
    /// for the whole token wins over a file's own.
    pub fn forget(&mut self, later: &MetadataUpdate) {
        let drop_if = |field: &mut Option<String>, given: &Option<String>| {
            if given.is_some() {
                *field = None;
            }
        };
        drop_if(&mut self.title, &later.title);
        drop_if(&mut self.description, &later.description);
        drop_if(&mut self.tags, &later.tags);
        drop_if(&mut self.album_id, &later.album_id);
        if later.publish.is_some() {
            self.publish = None;
        }
    }

    /// `later` on top of this update: its fields win.
    pub fn merge(&mut self, later: &MetadataUpdate) {
        let take = |field: &mut Option<String>, value: &Option<String>| {
            if value.is_some() {
                field.clone_from(value);
            }
        };
        take(&mut self.title, &later.title);
        take(&mut self.description, &later.description);
        take(&mut self.tags, &later.tags);
        take(&mut self.album_id, &later.album_id);
        self.publish = later.publish.or(self.publish);
    }
}

impl std::ops::Deref for Photo {
    type Target = PhotoRecord;

    fn deref(&self) -> &PhotoRecord {
        &self.record
    }
}

impl Photo {
    pub fn current_version(&self) -> &PhotoVersion {
        self.versions.last().expect("a photo always has at least its first version")
    }
}

/// A photo's own record, without its versions: what both backends store
/// apart from the versions, so that adding a version never rewrites (or
/// reads) the ones before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoRecord {
    pub photo_id: PhotoId,
    pub tree_id: String,
    /// The photo's secret `token` (23's `photo_id` + `token` access scheme).
    pub token: PhotoSecret,
    #[serde(flatten)]
    pub metadata: PhotoMetadata,
    pub created_at: u64,
}

impl PhotoRecord {
    pub fn with_versions(self, versions: Vec<PhotoVersion>) -> Photo {
        Photo { record: self, versions }
    }

    /// The answer to a commit that recorded `version`.
    pub fn recorded(self, version: PhotoVersion) -> RecordedVersion {
        RecordedVersion { photo_id: self.photo_id, tree_id: self.tree_id, token: self.token, version }
    }
}

/// A version just recorded, with what an answer needs of its photo. Its
/// cost does not grow with the photo's other versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedVersion {
    pub photo_id: PhotoId,
    pub tree_id: String,
    pub token: PhotoSecret,
    pub version: PhotoVersion,
}

/// What `create_photo` needs; the store assigns the id and secret token.
#[derive(Clone, Debug)]
pub struct NewPhoto {
    pub tree_id: String,
    pub metadata: PhotoMetadata,
    pub first_version: VersionFile,
}

/// What a token's uploads become.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenPurpose {
    /// New versions of this photo.
    Replace { photo_id: PhotoId },
    /// New photos, each with these terms' metadata (boxed: the terms are
    /// large, and grants travel in every reservation).
    Upload { upload: Box<UploadTerms> },
}

/// What an upload token gives the photos it creates, as issued.
/// `update-upload-token` changes the store's working copy of the metadata
/// (see [`StateStore::update_upload_token`]), never these terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTerms {
    /// The site's tree id at issue time.
    pub tree_id: String,
    pub metadata: PhotoMetadata,
    /// The issuing request's other parameters, repeated in the callback.
    pub extras: Vec<(String, String)>,
}

/// The terms of a token, fixed when it is issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub token: ReplaceToken,
    /// Records of replace tokens from before upload tokens existed have a
    /// top-level `photo_id`, which is exactly how `Replace` is stored.
    #[serde(flatten)]
    pub purpose: TokenPurpose,
    pub max_uploads: u32,
    pub issued_at: u64,
    /// Unix seconds; the token is refused from this second on.
    pub valid_until: u64,
    pub return_url: Option<String>,
    pub background_return: bool,
    /// The consumer key that asked for it, for the audit trail.
    pub issued_to: String,
}

impl TokenGrant {
    pub fn kind(&self) -> TokenKind {
        match self.purpose {
            TokenPurpose::Replace { .. } => TokenKind::Replace,
            TokenPurpose::Upload { .. } => TokenKind::Upload,
        }
    }

    /// The photo a replace token replaces.
    pub fn photo_id(&self) -> Option<PhotoId> {
        match self.purpose {
            TokenPurpose::Replace { photo_id } => Some(photo_id),
            TokenPurpose::Upload { .. } => None,
        }
    }
}

/// What [`StateStore::update_upload_token`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenUpdate {
    Updated,
    /// No such upload token, or it has expired (a replace token is not one).
    Unknown,
    /// As many files of the token as its `max_uploads` have metadata of
    /// their own already (a token has no more files than uploads).
    TooManyFiles,
}

/// A reserved upload slot, to be committed or refunded exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub grant: TokenGrant,
    /// Identifies this reservation among the token's live ones.
    pub id: String,
    pub lease_until: u64,
}

/// Why a slot could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("unknown token")]
    Unknown,
    #[error("the token has expired")]
    Expired,
    #[error("the token has no uploads left")]
    UsedUp,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh reservation id.
pub fn new_reservation_id() -> String {
    hex::encode(crate::domain::random_bytes::<16>())
}

/// Why a reservation could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The lease ran out and the slot went back to the token (and perhaps to
    /// another upload); the version was not recorded.
    #[error("the upload slot's lease ran out before the upload completed")]
    LeaseLost,
    #[error("the photo no longer exists")]
    NoSuchPhoto,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The identity of one signed request, for replay protection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NonceKey {
    pub consumer_key: String,
    pub token: String,
    pub nonce: String,
    pub timestamp: u64,
}

impl NonceKey {
    /// The key as one string, the same in every backend. Newlines cannot
    /// occur in any of the parts (they are refused as OAuth parameter
    /// values long before this point), so the join is unambiguous.
    pub fn identity(&self) -> String {
        format!("{}\n{}\n{}\n{}", self.consumer_key, self.token, self.nonce, self.timestamp)
    }
}

/// How long every backend keeps a token after it expired (or after its
/// last lease ran out, whichever is later) before forgetting it: a margin
/// for clock differences between instances. A forgotten token is answered
/// like an unknown one, which is what an expired one gets anyway, so
/// nothing needs it kept longer.
pub const EXPIRED_TOKEN_RETENTION_SECS: u64 = 60;

/// Shared state. Every method is atomic on its own: concurrent calls from any
/// number of tasks or instances see each other's effects whole or not at all.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Creates a photo with a new id, a new secret token and its first
    /// version. Ids increase and are never reused.
    async fn create_photo(&self, new: NewPhoto) -> Result<Photo, StoreError>;

    /// The photo with this id, or `None`.
    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError>;

    /// Stores a newly issued token: a replace token if its photo exists
    /// (`false`, storing nothing, when there is no such photo); an upload
    /// token always. The token is kept at least until `valid_until`, and
    /// after that while a reservation of it is live.
    async fn issue_token(&self, grant: TokenGrant) -> Result<bool, StoreError>;

    /// How a token stands at `now`, if it is known (expired or not): its
    /// terms, its committed uploads and its live reservations. A read for
    /// reporting; redeems go through [`StateStore::reserve_slot`].
    async fn token_status(&self, token: &ReplaceToken, now: u64) -> Result<Option<TokenStatus>, StoreError>;

    /// Reserves one upload slot of `token` at time `now`, leased until
    /// `now + lease_secs`, as reservation `id` (the caller's, so that it can
    /// withdraw a reservation whose answer it never got). Refuses an unknown
    /// token or one of another kind (`Unknown`), one whose
    /// `valid_until <= now` (`Expired`), and one whose committed uploads
    /// plus live reservations already reach `max_uploads` (`UsedUp`).
    /// Expired leases of other reservations count as free slots. Reserving
    /// a live `id` again answers that reservation; a withdrawn `id` is
    /// refused (`Store`).
    async fn reserve_slot(
        &self,
        token: &ReplaceToken,
        kind: TokenKind,
        id: &str,
        now: u64,
        lease_secs: u64,
    ) -> Result<Reservation, ReserveError>;

    /// Withdraws reservation `id` of `token`, whose reserve failed as far as
    /// the caller knows (a timeout: the store may apply it later): its slot
    /// goes back if it was made, and it is never made afterwards (until
    /// `until`, when its lease would have run out anyway).
    async fn withdraw_reservation(
        &self,
        token: &ReplaceToken,
        id: &str,
        until: u64,
    ) -> Result<(), StoreError>;

    /// Extends a live reservation's lease to `now + lease_secs`. Returns
    /// `false` when the reservation is no longer live (its lease ran out, or
    /// it was committed or refunded).
    async fn renew_reservation(
        &self,
        reservation: &Reservation,
        now: u64,
        lease_secs: u64,
    ) -> Result<bool, StoreError>;

    /// Gives the slot back. Refunding a reservation that is no longer live is
    /// a no-op, so a refund can never free a slot twice.
    async fn refund_slot(&self, reservation: &Reservation) -> Result<(), StoreError>;

    /// Consumes the reserved slot and records `version`, both or neither:
    /// for a replace token as its photo's new current version (costing the
    /// same whatever the versions before it), for an upload token as the
    /// first version of a new photo with the token's current metadata and,
    /// when `file` (a Resumable.js identifier) has metadata of its own,
    /// that on top. Fails with `LeaseLost` (recording nothing) when the
    /// reservation is no longer live. `outbox` (its event and deliveries,
    /// completed by the version) is written in the same atomic step.
    async fn commit_version(
        &self,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
        file: Option<&str>,
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitError>;

    /// Changes the metadata of an upload token that has not expired at
    /// `now`: without `file`, for its files to come and every photo already
    /// created from it, and the same fields of its files' own metadata are
    /// forgotten (the latest change wins); with `file`, for that file only
    /// (its photos, if made already). Only the fields `update` gives change.
    async fn update_upload_token(
        &self,
        token: &ReplaceToken,
        update: &MetadataUpdate,
        file: Option<&str>,
        now: u64,
    ) -> Result<TokenUpdate, StoreError>;

    /// Appends `version` to a photo directly (the signed `/api/photo/replace`).
    /// `Ok(None)` when there is no such photo.
    async fn add_version(
        &self,
        photo_id: PhotoId,
        version: VersionFile,
    ) -> Result<Option<RecordedVersion>, StoreError>;

    /// Records a nonce; `true` the first time this exact key is seen, `false`
    /// on every later call until `expires_at` has passed.
    async fn first_use_of_nonce(&self, key: &NonceKey, expires_at: u64) -> Result<bool, StoreError>;

    /// How many failed redeems `client` (an address or network, see the
    /// redeem endpoint) has made in `window` (a Unix minute: seconds / 60).
    async fn redeem_failures(&self, client: &str, window: u64) -> Result<u32, StoreError>;

    /// Counts one more failed redeem of `client` in `window`; returns the
    /// new count. Counts are kept at least until the window is over.
    async fn count_redeem_failure(&self, client: &str, window: u64) -> Result<u32, StoreError>;

    /// Succeeds when the store can serve requests (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Forgets what has expired by `now`: nonces past their expiry, tokens
    /// past [`EXPIRED_TOKEN_RETENTION_SECS`], failure counts of past
    /// windows. Run periodically by the application; a backend whose
    /// records expire by themselves (Redis) does nothing.
    async fn purge_expired(&self, now: u64) -> Result<Purged, StoreError>;
}

/// How a token stands, for reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenStatus {
    pub grant: TokenGrant,
    /// Committed uploads.
    pub uploads_used: u32,
    /// Reservations whose lease has not run out.
    pub uploads_in_flight: u32,
}

/// What one [`StateStore::purge_expired`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub nonces: u64,
    pub tokens: u64,
    /// Deliveries settled longer ago than an expired token is kept.
    pub deliveries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_photo_recorded_before_its_metadata_fields_reads_with_their_defaults() {
        let old = r#"{"photo_id":3,"tree_id":"1","token":"s3cr3t","title":"Old","created_at":5,
            "versions":[{"number":1,"object_key":"media/a","size":1,"content_type":"image/jpeg",
            "sha256":"00","original_filename":null,"created_at":5}]}"#;
        let photo: Photo = serde_json::from_str(old).unwrap();
        let expected = PhotoMetadata { title: Some("Old".into()), ..PhotoMetadata::default() };
        assert_eq!(photo.metadata, expected);
        assert!(photo.metadata.publish, "published by default, as 23 does");
        let again: Photo = serde_json::from_str(&serde_json::to_string(&photo).unwrap()).unwrap();
        assert_eq!(again, photo);
    }
}
