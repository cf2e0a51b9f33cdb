//! Upload tokens: `/api/photo/get-upload-token` issues one (each upload
//! with it is a new photo carrying its metadata); `/api/photo/update-upload-token`
//! changes that metadata for the files still to come and the photos
//! already created (the token is the credential). Redeeming one is the
//! redeem walk's (`redeem`).

use super::call::ApiRequest;
use super::metadata::{metadata_from, plain_text, update_from};
use super::params::{TokenTerms, absolute_http_url, file_identifier};
use crate::context::Context;
use crate::domain::{Permission, ReplaceToken};
use crate::envelope::Success;
use crate::error::ApiError;
use crate::store::{TokenPurpose, TokenUpdate, UploadTerms};

/// Every parameter get-upload-token reads itself; any other is an extra
/// parameter, kept with the token and repeated in its callbacks.
const OWN_PARAMETERS: [&str; 11] = [
    "return_url",
    "background_return_p",
    "valid_minutes",
    "max_uploads",
    "title",
    "description",
    "tags",
    "publish",
    "album_id",
    "absolute_url",
    "user_id",
];

/// Parameters of the API's own conventions (the answer's format, the
/// OAuth signature), never extra parameters.
fn is_protocol_parameter(name: &str) -> bool {
    matches!(name, "format" | "callback" | "varname" | "raw") || name.starts_with("oauth_")
}

/// `/api/photo/get-upload-token`.
#[tracing::instrument(skip_all)]
pub async fn get_upload_token(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let params = &request.params;
    let limits = &ctx.config.limits;
    let terms = TokenTerms::from_params(params, ctx)?;
    let mut metadata = metadata_from(params, limits)?;
    let mut stored_bytes = [metadata.tags.as_deref(), metadata.album_id.as_deref()]
        .iter()
        .flatten()
        .map(|v| v.len())
        .sum::<usize>();
    if let Some(raw) = params.single("absolute_url")?.filter(|v| !v.is_empty()) {
        absolute_http_url("absolute_url", raw, limits.max_upload_token_bytes)?;
        metadata.absolute_url = Some(raw.to_owned());
        stored_bytes += raw.len();
    }
    if let Some(user_id) = params.single("user_id")?.filter(|v| !v.is_empty()) {
        // Refused, never dropped: the caller meant the upload to be someone's.
        if request.caller.permission < Permission::Super {
            return Err(ApiError::PermissionDenied { required: Permission::Super });
        }
        if !user_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::InvalidInput("user_id must be a user id (a number)".into()));
        }
        metadata.user_id = Some(user_id.to_owned());
        stored_bytes += user_id.len();
    }
    let extras: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| !OWN_PARAMETERS.contains(name) && !is_protocol_parameter(name))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    stored_bytes += extras.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    if stored_bytes > limits.max_upload_token_bytes {
        return Err(ApiError::InvalidInput(format!(
            "tags, album_id, absolute_url, user_id and the extra parameters hold {stored_bytes} bytes; at most {} are allowed (limits.max_upload_token_bytes)",
            limits.max_upload_token_bytes
        )));
    }
    let photos = UploadTerms { tree_id: ctx.config.site.tree_id.clone(), metadata: metadata.clone(), extras };
    let grant = terms.grant(TokenPurpose::Upload { upload: Box::new(photos) }, &request.caller);
    ctx.state.issue_token(grant.clone()).await?;
    tracing::info!(token = ?grant.token, terms.max_uploads, terms.valid_minutes, "upload token issued");
    let text = |value: Option<String>| value.unwrap_or_default();
    let mut fields = vec![
        ("upload_token".into(), grant.token.to_string()),
        ("title".into(), text(metadata.title)),
        ("description".into(), text(metadata.description)),
        ("publish".into(), if metadata.publish { "1" } else { "0" }.into()),
        ("tags".into(), text(metadata.tags)),
        ("user_id".into(), text(metadata.user_id)),
        ("album_id".into(), text(metadata.album_id)),
    ];
    fields.extend(terms.fields());
    Ok(Success {
        message: "The upload token is ready to use".into(),
        object_name: "uploadtoken",
        fields,
        list: None,
        lists: Vec::new(),
    })
}

/// `/api/photo/update-upload-token`.
#[tracing::instrument(skip_all)]
pub async fn update_upload_token(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let params = &request.params;
    let unknown = || ApiError::InvalidInput("upload_token is unknown or has expired".into());
    // A malformed token cannot exist: it is simply unknown.
    let token: ReplaceToken =
        params.single("upload_token")?.unwrap_or_default().parse().map_err(|_| unknown())?;
    let update = update_from(params, &ctx.config.limits)?;
    let file = match params.single("resumableIdentifier")?.filter(|f| !f.is_empty()) {
        Some(raw) => Some(file_identifier(raw).map_err(ApiError::InvalidInput)?),
        None => None,
    };
    match ctx.state.update_upload_token(&token, &update, file, crate::domain::unix_now()).await? {
        TokenUpdate::Updated => {}
        TokenUpdate::Unknown => return Err(unknown()),
        TokenUpdate::TooManyFiles => {
            return Err(ApiError::InvalidInput(
                "as many files as this upload token has uploads have metadata of their own already".into(),
            ));
        }
    }
    tracing::info!(token = ?token, file = file.map(plain_text), "upload token updated");
    Ok(Success {
        message: "The token information was updated".into(),
        object_name: "photo",
        fields: vec![],
        list: None,
        lists: Vec::new(),
    })
}
