//! [`RedeemError`]: every way a redeem can end without a new version, and
//! the one place each is logged. A [`Refusal`] comes before (or instead of)
//! anything the site should hear of and is answered in plain text with a
//! status that stops Resumable.js retrying, unless the condition passes
//! (503); a [`Failure`] comes after a slot was reserved and given
//! back, and is told to the site like a success.

use http::StatusCode;
use http::header::{self, HeaderValue};

use crate::http::{Body, text};
use crate::store::{CommitError, ReserveError, StoreError, TokenGrant, TokenKind};
use crate::upload::UploadError;

/// Why a redeem did not end in a new version.
#[derive(Debug)]
pub enum RedeemError {
    Refused(Refusal),
    Failed { site: SiteReturn, cause: Failure },
}

/// Refused before a slot was held (or once it was given back, for a
/// request that breaks the rules): a plain-text answer, never redirected.
#[derive(Debug)]
pub enum Refusal {
    NotMultipart,
    /// The multipart content type is unusable; the text is for the client.
    BadContentType(String),
    /// `limits.max_concurrent_uploads` uploads are in progress.
    Busy,
    /// The body breaks the multipart rules or the limits on its fields.
    Unreadable(UploadError),
    MissingToken,
    DuplicateToken,
    /// A parameter breaks its rule; the text says which and how.
    BadParameter(String),
    /// A file sent in more than one chunk, to an object store that cannot
    /// take them (the in-memory one of the unit tests).
    ChunksNotSupported,
    /// The chunk's file was cancelled (its type refused, its completion
    /// failed); the text says why, the same for every chunk of it.
    FileCancelled(String),
    /// The chunk's file had no chunk for this many seconds and was dropped.
    FileAbandoned(u64),
    /// Another request is completing the chunk's file (or its part).
    StillCompleting,
    /// The chunk's body stopped coming (idle, or the client went away).
    ChunkInterrupted(String),
    /// The object store failed, passingly as far as anyone knows.
    StorageUnavailable(crate::storage::StorageError),
    /// Chunk parameters that are not numbers, disagree, or describe a
    /// chunk that cannot be (or a file over the size limit).
    BadChunk(String),
    UnknownToken,
    UsedUp,
    /// An unknown token from a client past
    /// `limits.redeem_rate_limit_per_minute`: answered as `UnknownToken`,
    /// after `limits.redeem_rate_limit_delay_ms`.
    UnknownTokenPastBudget,
    Unavailable(StoreError),
}

/// Whom to tell how an upload went: the token's terms and the request's
/// extra parameters, repeated to the site.
#[derive(Debug)]
pub struct SiteReturn {
    pub grant: TokenGrant,
    pub extras: Vec<(String, String)>,
    /// The client is a script (a Resumable.js or flow.js chunk): it cannot
    /// follow a redirect to the site's page, so it is given the URL.
    pub by_script: bool,
}

/// Why an upload that held a slot failed; the site is told.
#[derive(Debug)]
pub enum Failure {
    NoFile,
    Upload(UploadError),
    Commit(CommitError),
    /// A chunked file's completion failed before, and the site was told
    /// this message: told again to the client, not to the site.
    Told(String),
}

impl From<Refusal> for RedeemError {
    fn from(refusal: Refusal) -> Self {
        RedeemError::Refused(refusal)
    }
}

impl From<ReserveError> for Refusal {
    fn from(error: ReserveError) -> Self {
        match error {
            ReserveError::Store(e) => Refusal::Unavailable(e),
            ReserveError::UsedUp => Refusal::UsedUp,
            // Unknown and expired tokens get the same answer, so it does
            // not tell which tokens exist.
            ReserveError::Unknown | ReserveError::Expired => Refusal::UnknownToken,
        }
    }
}

impl RedeemError {
    /// A failure after the slot was given back. A body that breaks the
    /// multipart rules or the limits on its fields is the client's bug,
    /// not an upload outcome for the site: it is refused instead.
    pub fn after_slot(site: SiteReturn, cause: Failure) -> Self {
        match cause {
            Failure::Upload(e @ (UploadError::Malformed(_) | UploadError::TooLarge(_))) => {
                RedeemError::Refused(Refusal::Unreadable(e))
            }
            cause => RedeemError::Failed { site, cause },
        }
    }

    /// Logs the error at the level it deserves, with its internal cause:
    /// the service's own faults at warn, the client's at info.
    pub fn log(&self) {
        match self {
            RedeemError::Refused(Refusal::Unavailable(e)) => {
                tracing::warn!(error = %crate::causes::chain(e), "redeem refused: the state store is unavailable")
            }
            RedeemError::Refused(Refusal::StorageUnavailable(e)) => {
                tracing::warn!(error = %crate::causes::chain(e), "chunk refused: the object store failed")
            }
            RedeemError::Refused(Refusal::Busy) => {
                tracing::warn!("redeem refused: limits.max_concurrent_uploads reached")
            }
            RedeemError::Refused(refusal) => tracing::info!(?refusal, "redeem refused"),
            RedeemError::Failed { cause: Failure::Upload(e @ UploadError::Storage(_)), .. } => {
                tracing::warn!(error = %crate::causes::chain(e), "redeem upload could not be stored; slot given back")
            }
            RedeemError::Failed { cause: Failure::Commit(e), .. } => {
                tracing::warn!(error = %crate::causes::chain(e), "redeem could not be committed")
            }
            RedeemError::Failed { cause, .. } => {
                tracing::info!(?cause, "redeem upload failed; slot given back")
            }
        }
    }
}

impl Refusal {
    /// The plain-text answer, for a redeem of a token of `kind`.
    pub fn answer(&self, kind: TokenKind) -> http::Response<Body> {
        let refuse = |status, message: &str| text(status, format!("{message}\n"));
        let field = kind.field();
        let name = field.replace('_', " ");
        match self {
            Refusal::NotMultipart => {
                refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Expected a multipart/form-data body.")
            }
            Refusal::BadContentType(message) => refuse(StatusCode::BAD_REQUEST, message),
            Refusal::Unreadable(e) => {
                refuse(StatusCode::BAD_REQUEST, &format!("The upload could not be read: {e}."))
            }
            Refusal::BadParameter(message) => refuse(StatusCode::BAD_REQUEST, &format!("{message}.")),
            // 501 and 500 are permanent for Resumable.js and flow.js alike.
            Refusal::ChunksNotSupported => refuse(
                StatusCode::NOT_IMPLEMENTED,
                "This object store does not take files in chunks; send the file in one request.",
            ),
            // 415 is permanent for Resumable.js and flow.js alike.
            Refusal::FileCancelled(message) => {
                refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, &format!("The file was refused: {message}."))
            }
            Refusal::FileAbandoned(secs) => refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The file's upload was abandoned (no chunk for {secs} seconds); start it again."),
            ),
            Refusal::BadChunk(message) => {
                refuse(StatusCode::INTERNAL_SERVER_ERROR, &format!("The chunk was refused: {message}."))
            }
            Refusal::MissingToken => refuse(StatusCode::BAD_REQUEST, &format!("No {field} was given.")),
            Refusal::DuplicateToken => {
                refuse(StatusCode::BAD_REQUEST, &format!("{field} was given more than once."))
            }
            Refusal::UnknownToken | Refusal::UnknownTokenPastBudget => {
                refuse(StatusCode::NOT_FOUND, &format!("The {name} is unknown or has expired."))
            }
            Refusal::UsedUp => refuse(StatusCode::NOT_FOUND, &format!("The {name} has no uploads left.")),
            Refusal::StillCompleting => retry_soon("The file is being completed; send the chunk again."),
            Refusal::ChunkInterrupted(why) => {
                retry_soon(&format!("The chunk was cut short ({why}); send it again."))
            }
            Refusal::Busy | Refusal::Unavailable(_) | Refusal::StorageUnavailable(_) => {
                let mut response = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The service is temporarily unavailable; please try again.",
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
        }
    }
}

/// A `503` the libraries retry, after a second.
fn retry_soon(message: &str) -> http::Response<Body> {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n"));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

impl Failure {
    /// What the site is told went wrong.
    pub fn error_message(&self) -> String {
        match self {
            Failure::NoFile => "No file was included in the request.".into(),
            Failure::Upload(UploadError::Storage(_)) => {
                "The file could not be stored; please try again.".into()
            }
            Failure::Upload(other) => format!("The upload failed: {other}."),
            Failure::Commit(CommitError::LeaseLost) => {
                "The upload took too long and its slot expired; please try again.".into()
            }
            Failure::Commit(CommitError::NoSuchPhoto) => "The photo no longer exists.".into(),
            Failure::Commit(CommitError::Store(_)) => {
                "The service is temporarily unavailable; please try again.".into()
            }
            Failure::Told(message) => message.clone(),
        }
    }

    /// The client went away: nobody waits for the answer.
    pub fn client_gone(&self) -> bool {
        matches!(self, Failure::Upload(UploadError::Interrupted(_)))
    }
}
