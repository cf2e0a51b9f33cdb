//! The embedded store's tables and the records in them, and the reads and
//! writes one transaction does on them. Records are JSON; keys are the
//! natural ones (photo id, (photo id, version number), token, nonce
//! identity). A photo's record and each of its versions are rows of their
//! own, so recording a version writes one small row whatever came before.

use redb::{Database, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::causes::BoxError;
use crate::domain::PhotoSecret;
use crate::domain::{PhotoId, ReplaceToken};
use crate::store::{
    CommitError, MetadataUpdate, NewPhoto, Photo, PhotoMetadata, PhotoRecord, PhotoVersion, RecordedVersion,
    StoreError, TokenGrant, TokenPurpose, VersionFile,
};

/// Photo id → its [`PhotoRecord`].
pub const PHOTOS: TableDefinition<u64, &[u8]> = TableDefinition::new("photo_records");
/// (photo id, version number) → that [`VersionFile`].
pub const VERSIONS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("photo_versions");
/// Where earlier releases kept each photo whole, versions and all; split
/// into the two tables above when the database is opened.
const WHOLE_PHOTOS: TableDefinition<u64, &[u8]> = TableDefinition::new("photos");
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// (upload token, Resumable.js identifier) → that file's [`FileState`].
pub const UPLOAD_FILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("upload_files");
/// (token, identifier) → that file's `chunked::FileRecord`.
pub const CHUNKED_FILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("chunked_files");
/// (token, identifier, chunk number) → that chunk's `ChunkReceipt`.
pub const FILE_CHUNKS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("chunked_file_chunks");
/// Object key of a file being received → the end of its lease.
pub const LIVE_OBJECTS: TableDefinition<&str, u64> = TableDefinition::new("chunked_live_objects");
/// Nonce identity → expiry.
pub const NONCES: TableDefinition<&str, u64> = TableDefinition::new("nonces");
/// (expiry, nonce identity) → (), so expired nonces are purged by range.
pub const NONCE_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("nonce_expiry");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Deliveries to sites (see `deliveries.rs`): id → record, and its indexes.
pub const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
/// (due, id) of pending deliveries.
pub const DELIVERIES_DUE: TableDefinition<(u64, &str), ()> = TableDefinition::new("deliveries_due");
/// (created at, id) of pending deliveries.
pub const DELIVERIES_PENDING: TableDefinition<(u64, &str), ()> = TableDefinition::new("deliveries_pending");
/// (token, created at, id) of every delivery kept.
pub const TOKEN_DELIVERIES: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("token_deliveries");
/// (token, recorded at (µs), event id) → the event: the outcomes of its redeems.
pub const TOKEN_EVENTS: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("token_events");
/// (settled at, id) of delivered and dead deliveries, for the purge.
pub const DELIVERIES_SETTLED: TableDefinition<(u64, &str), ()> = TableDefinition::new("deliveries_settled");
pub const NEXT_PHOTO_ID: &str = "next_photo_id";

/// A token with its usage, as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenState {
    pub grant: TokenGrant,
    pub committed: u32,
    pub reservations: Vec<LiveReservation>,
    /// An upload token's working state; `None` for a replace token.
    #[serde(default)]
    pub upload: Option<UploadState>,
    /// Kept at least until then: a chunked file of it answers its outcome
    /// (or its cancellation) to chunks sent again until then.
    #[serde(default)]
    pub keep_until: u64,
    /// Reservation ids withdrawn, with when that stops mattering.
    #[serde(default)]
    pub withdrawn: Vec<LiveReservation>,
}

/// What an upload token has created, and its metadata as changed since.
/// Its files (Resumable.js identifiers) are rows of [`UPLOAD_FILES`], so
/// that this record stays small whatever visitors send.
#[derive(Debug, Serialize, Deserialize)]
pub struct UploadState {
    pub metadata: PhotoMetadata,
    pub photos: Vec<PhotoId>,
}

/// One file of an upload token, named by its Resumable.js identifier.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FileState {
    /// Set by `update-upload-token` with this file's identifier.
    pub update: Option<MetadataUpdate>,
    /// The photos uploads with this identifier made (two visitors may
    /// send files that share one).
    pub photos: Vec<PhotoId>,
}

/// The rows of `token`'s files: from `(token, "")` up to, not including,
/// `(token + "\0", "")`, the first key of any longer token.
pub fn file_range(token: &str) -> (String, String) {
    (token.to_owned(), format!("{token}\0"))
}

/// Reads the file row `(token, file)`.
pub fn get_file(txn: &WriteTransaction, token: &str, file: &str) -> Result<Option<FileState>, StoreError> {
    let files = txn.open_table(UPLOAD_FILES).map_err(store_error)?;
    match files.get((token, file)).map_err(store_error)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

pub fn put_file(
    txn: &WriteTransaction,
    token: &str,
    file: &str,
    state: &FileState,
) -> Result<(), StoreError> {
    let mut files = txn.open_table(UPLOAD_FILES).map_err(store_error)?;
    files.insert((token, file), encode(state).as_slice()).map_err(store_error)?;
    Ok(())
}

/// Every file row of `token`, decoded.
pub fn token_files(txn: &WriteTransaction, token: &str) -> Result<Vec<(String, FileState)>, StoreError> {
    let files = txn.open_table(UPLOAD_FILES).map_err(store_error)?;
    let (start, end) = file_range(token);
    let mut rows = Vec::new();
    for entry in files.range((start.as_str(), "")..(end.as_str(), "")).map_err(store_error)? {
        let (key, bytes) = entry.map_err(store_error)?;
        rows.push((key.value().1.to_owned(), decode(bytes.value())?));
    }
    Ok(rows)
}

/// Deletes every file row of `token`.
pub fn delete_files(txn: &WriteTransaction, token: &str) -> Result<(), StoreError> {
    let mut files = txn.open_table(UPLOAD_FILES).map_err(store_error)?;
    let (start, end) = file_range(token);
    files.retain_in((start.as_str(), "")..(end.as_str(), ""), |_, _| false).map_err(store_error)
}

impl TokenState {
    /// A newly issued token's state.
    pub fn issued(grant: TokenGrant) -> Self {
        let upload = match &grant.purpose {
            TokenPurpose::Replace { .. } => None,
            TokenPurpose::Upload { upload } => {
                Some(UploadState { metadata: upload.metadata.clone(), photos: Vec::new() })
            }
        };
        TokenState {
            grant,
            committed: 0,
            reservations: Vec::new(),
            upload,
            keep_until: 0,
            withdrawn: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LiveReservation {
    pub id: String,
    pub lease_until: u64,
}

impl TokenState {
    pub fn live_reservation(&mut self, id: &str, now: u64) -> Option<&mut LiveReservation> {
        self.reservations.iter_mut().find(|r| r.id == id && r.lease_until > now)
    }
}

pub fn store_error(e: impl Into<BoxError>) -> StoreError {
    StoreError::new(e)
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::new(format!("corrupt record: {e}")))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("state records always serialize")
}

/// Creates every table up front so read transactions never find one missing,
/// and splits the photos of an earlier release's database into records and
/// versions (in the same transaction: all or nothing).
pub fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(store_error)?;
    let photos_are_whole =
        txn.list_tables().map_err(store_error)?.any(|table| table.name() == WHOLE_PHOTOS.name());
    if photos_are_whole {
        split_whole_photos(&txn)?;
    }
    txn.open_table(PHOTOS).map_err(store_error)?;
    txn.open_table(VERSIONS).map_err(store_error)?;
    txn.open_table(TOKENS).map_err(store_error)?;
    txn.open_table(UPLOAD_FILES).map_err(store_error)?;
    txn.open_table(NONCES).map_err(store_error)?;
    txn.open_table(NONCE_EXPIRY).map_err(store_error)?;
    txn.open_table(META).map_err(store_error)?;
    txn.open_table(CHUNKED_FILES).map_err(store_error)?;
    txn.open_table(FILE_CHUNKS).map_err(store_error)?;
    txn.open_table(LIVE_OBJECTS).map_err(store_error)?;
    txn.open_table(DELIVERIES).map_err(store_error)?;
    txn.open_table(DELIVERIES_DUE).map_err(store_error)?;
    txn.open_table(DELIVERIES_PENDING).map_err(store_error)?;
    txn.open_table(TOKEN_DELIVERIES).map_err(store_error)?;
    txn.open_table(DELIVERIES_SETTLED).map_err(store_error)?;
    txn.open_table(TOKEN_EVENTS).map_err(store_error)?;
    txn.commit().map_err(store_error)
}

/// Records a nonce in `txn`: `true` the first time, `false` while an
/// earlier record of it has not expired.
pub fn record_nonce(txn: &WriteTransaction, identity: &str, expires_at: u64) -> Result<bool, StoreError> {
    let now = crate::domain::unix_now();
    let mut nonces = txn.open_table(NONCES).map_err(store_error)?;
    let previous = nonces.get(identity).map_err(store_error)?.map(|v| v.value());
    if previous.is_some_and(|expiry| expiry > now) {
        return Ok(false);
    }
    let mut index = txn.open_table(NONCE_EXPIRY).map_err(store_error)?;
    if let Some(old_expiry) = previous {
        index.remove((old_expiry, identity)).map_err(store_error)?;
    }
    nonces.insert(identity, expires_at).map_err(store_error)?;
    index.insert((expires_at, identity), ()).map_err(store_error)?;
    Ok(true)
}

pub fn get_token_state(
    tokens: &impl ReadableTable<&'static str, &'static [u8]>,
    token: &ReplaceToken,
) -> Result<Option<TokenState>, StoreError> {
    match tokens.get(token.as_str()).map_err(store_error)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Reads `token`'s state in `txn` and hands it to `change`, which answers
/// and says whether it changed the state; a changed state is written back.
/// An unknown token answers `unknown` and writes nothing.
pub fn update_token<T>(
    txn: &WriteTransaction,
    token: &ReplaceToken,
    unknown: T,
    change: impl FnOnce(&mut TokenState) -> Result<(T, bool), StoreError>,
) -> Result<T, StoreError> {
    let mut tokens = txn.open_table(TOKENS).map_err(store_error)?;
    let Some(mut state) = get_token_state(&tokens, token)? else {
        return Ok(unknown);
    };
    let (answer, changed) = change(&mut state)?;
    if changed {
        tokens.insert(token.as_str(), encode(&state).as_slice()).map_err(store_error)?;
    }
    Ok(answer)
}

fn split_whole_photos(txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let whole = txn.open_table(WHOLE_PHOTOS).map_err(store_error)?;
        let mut photos = txn.open_table(PHOTOS).map_err(store_error)?;
        for entry in whole.iter().map_err(store_error)? {
            let (_, bytes) = entry.map_err(store_error)?;
            let photo: Photo = decode(bytes.value())?;
            insert_photo(txn, &mut photos, &photo.record, photo.versions)?;
        }
    }
    txn.delete_table(WHOLE_PHOTOS).map_err(store_error)?;
    Ok(())
}

/// Creates a photo with the next id and a new secret token.
pub fn create_photo(
    txn: &WriteTransaction,
    new: NewPhoto,
) -> Result<(PhotoRecord, PhotoVersion), StoreError> {
    let mut meta = txn.open_table(META).map_err(store_error)?;
    let id = meta.get(NEXT_PHOTO_ID).map_err(store_error)?.map_or(1, |v| v.value());
    meta.insert(NEXT_PHOTO_ID, id + 1).map_err(store_error)?;
    let record = PhotoRecord {
        photo_id: PhotoId(id),
        tree_id: new.tree_id,
        token: PhotoSecret::generate(),
        metadata: new.metadata,
        created_at: new.first_version.created_at,
    };
    let first = PhotoVersion { number: 1, file: new.first_version };
    let mut photos = txn.open_table(PHOTOS).map_err(store_error)?;
    insert_photo(txn, &mut photos, &record, vec![first.clone()])?;
    Ok((record, first))
}

/// Applies `update` to photo `id`'s metadata (a photo that is gone is skipped).
pub fn update_photo_metadata(
    txn: &WriteTransaction,
    id: PhotoId,
    update: &MetadataUpdate,
) -> Result<(), StoreError> {
    let mut photos = txn.open_table(PHOTOS).map_err(store_error)?;
    let Some(mut record) = get_photo_record(&photos, id)? else {
        return Ok(());
    };
    update.apply_to(&mut record.metadata);
    photos.insert(id.0, encode(&record).as_slice()).map_err(store_error)?;
    Ok(())
}

/// Stores a photo's record and its versions.
pub fn insert_photo(
    txn: &WriteTransaction,
    photos: &mut redb::Table<u64, &'static [u8]>,
    record: &PhotoRecord,
    versions: Vec<PhotoVersion>,
) -> Result<(), StoreError> {
    photos.insert(record.photo_id.0, encode(record).as_slice()).map_err(store_error)?;
    let mut table = txn.open_table(VERSIONS).map_err(store_error)?;
    for version in versions {
        table
            .insert((record.photo_id.0, version.number), encode(&version.file).as_slice())
            .map_err(store_error)?;
    }
    Ok(())
}

pub fn get_photo_record(
    photos: &impl ReadableTable<u64, &'static [u8]>,
    id: PhotoId,
) -> Result<Option<PhotoRecord>, StoreError> {
    match photos.get(id.0).map_err(store_error)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// A photo with every version, oldest first, from one snapshot.
pub fn read_photo(txn: &redb::ReadTransaction, id: PhotoId) -> Result<Option<Photo>, StoreError> {
    let Some(record) = get_photo_record(&txn.open_table(PHOTOS).map_err(store_error)?, id)? else {
        return Ok(None);
    };
    let table = txn.open_table(VERSIONS).map_err(store_error)?;
    let mut versions = Vec::new();
    for entry in table.range((id.0, 0)..=(id.0, u32::MAX)).map_err(store_error)? {
        let (key, bytes) = entry.map_err(store_error)?;
        versions.push(PhotoVersion { number: key.value().1, file: decode(bytes.value())? });
    }
    if versions.is_empty() {
        return Err(StoreError::new(format!("photo {id} has no versions")));
    }
    Ok(Some(record.with_versions(versions)))
}

/// Appends `version` to photo `id`: reads the photo's record and its last
/// version number, writes one row.
pub fn append_version(
    txn: &WriteTransaction,
    id: PhotoId,
    version: VersionFile,
) -> Result<Option<RecordedVersion>, StoreError> {
    let Some(record) = get_photo_record(&txn.open_table(PHOTOS).map_err(store_error)?, id)? else {
        return Ok(None);
    };
    let mut versions = txn.open_table(VERSIONS).map_err(store_error)?;
    let last = match versions.range((id.0, 0)..=(id.0, u32::MAX)).map_err(store_error)?.next_back() {
        Some(entry) => entry.map_err(store_error)?.0.value().1,
        None => 0,
    };
    let number = last + 1;
    versions.insert((id.0, number), encode(&version).as_slice()).map_err(store_error)?;
    Ok(Some(record.recorded(PhotoVersion { number, file: version })))
}

/// Consumes reservation `id` of `token` and records `version` in `txn`
/// (see `StateStore::commit_version`): the slot is spent if and only if
/// the version is recorded, every write being in this one transaction.
pub fn commit_reserved(
    txn: &WriteTransaction,
    token: &ReplaceToken,
    id: &str,
    version: VersionFile,
    now: u64,
    file: Option<&str>,
) -> Result<Result<RecordedVersion, CommitError>, StoreError> {
    update_token(txn, token, Err(CommitError::LeaseLost), |state| {
        if state.live_reservation(id, now).is_none() {
            return Ok((Err(CommitError::LeaseLost), false));
        }
        let recorded = match &state.grant.purpose {
            TokenPurpose::Replace { photo_id } => match append_version(txn, *photo_id, version)? {
                Some(recorded) => recorded,
                None => return Ok((Err(CommitError::NoSuchPhoto), false)),
            },
            TokenPurpose::Upload { upload: terms } => {
                let tree_id = terms.tree_id.clone();
                let upload =
                    state.upload.as_mut().ok_or_else(|| store_error("upload token without its state"))?;
                let mut metadata = upload.metadata.clone();
                let mut own = match file {
                    Some(file) => Some(get_file(txn, token.as_str(), file)?.unwrap_or_default()),
                    None => None,
                };
                if let Some(update) = own.as_ref().and_then(|own| own.update.as_ref()) {
                    update.apply_to(&mut metadata);
                }
                let (record, first) =
                    create_photo(txn, NewPhoto { tree_id, metadata, first_version: version })?;
                let recorded = record.recorded(first);
                upload.photos.push(recorded.photo_id);
                if let (Some(file), Some(own)) = (file, own.as_mut()) {
                    own.photos.push(recorded.photo_id);
                    put_file(txn, token.as_str(), file, own)?;
                }
                recorded
            }
        };
        state.reservations.retain(|r| r.id != id);
        state.committed += 1;
        Ok((Ok(recorded), true))
    })
}
