//! [`ApiError`]: the one place where failures become 23 error codes.
//!
//! Every API failure is answered HTTP 200 with `status="error"`, a `code`
//! from 23's list and a message safe to show a client. Internal causes (a
//! store's error text, an I/O error) go to the log, never to the client.

use crate::auth::AuthError;
use crate::domain::Permission;
use crate::upload::UploadError;

/// A failed API call, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, stale, replayed or wrong OAuth signature.
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// The caller's level is below the method's.
    #[error("permission denied (required level: {required})")]
    PermissionDenied { required: Permission },
    /// A parameter is malformed, duplicated or out of its domain.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("no such photo")]
    NoSuchPhoto,
    #[error("no file")]
    NoFile,
    /// The upload could not be received or stored; the message is for the client.
    #[error("error processing upload: {0}")]
    ErrorProcessingUpload(String),
    /// The object store failed while taking a file; the cause is logged.
    #[error("storage failed: {0}")]
    StorageFailed(String),
    /// A backend failed; the cause is logged, the client is told to retry.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// The 23 error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidSignature(_) => "invalid_signature",
            ApiError::PermissionDenied { .. } => "permission_denied",
            ApiError::InvalidInput(_) => "invalid_input",
            ApiError::NoSuchPhoto => "no_such_photo",
            ApiError::NoFile => "no_file",
            ApiError::ErrorProcessingUpload(_) | ApiError::StorageFailed(_) => "error_processing_upload",
            ApiError::Unavailable(_) => "service_unavailable",
        }
    }

    /// The message shown to the client.
    pub fn client_message(&self) -> String {
        match self {
            ApiError::InvalidSignature(detail) => {
                format!("The API signature is invalid: {detail}.")
            }
            ApiError::PermissionDenied { required } => format!(
                "You don't have the necessary permissions to perform this action (required level: '{required}')"
            ),
            ApiError::InvalidInput(detail) => format!("Parameters are malformed: {detail}."),
            ApiError::NoSuchPhoto => "No photo/video with the given id.".to_owned(),
            ApiError::NoFile => "No file was included in the request.".to_owned(),
            ApiError::ErrorProcessingUpload(detail) => {
                format!("An error occurred while processing the uploaded file: {detail}.")
            }
            ApiError::StorageFailed(_) => {
                "An error occurred while processing the uploaded file: it could not be stored.".to_owned()
            }
            ApiError::Unavailable(_) => {
                "The service is temporarily unavailable; please try again.".to_owned()
            }
        }
    }

    /// Whether this is the server's fault (logged at warn) rather than the
    /// client's (logged at info).
    pub fn is_server_fault(&self) -> bool {
        matches!(self, ApiError::Unavailable(_) | ApiError::StorageFailed(_))
    }

    /// Logs the failure with its internal cause at the level it deserves.
    pub fn log(&self) {
        if self.is_server_fault() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::info!(code = self.code(), error = %self, "request refused");
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Unavailable(crate::causes::chain(&e))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Refused(reason) => ApiError::InvalidSignature(reason),
            AuthError::Store(e) => e.into(),
        }
    }
}

/// How a failed multipart receive of a signed upload is reported.
impl From<UploadError> for ApiError {
    fn from(error: UploadError) -> Self {
        match &error {
            UploadError::Malformed(_)
            | UploadError::TooLarge(_)
            | UploadError::FileTooLarge(_)
            | UploadError::MediaType(_) => ApiError::InvalidInput(error.to_string()),
            UploadError::Interrupted(_) => ApiError::ErrorProcessingUpload(error.to_string()),
            UploadError::Storage(_) => ApiError::StorageFailed(crate::causes::chain(&error)),
        }
    }
}
