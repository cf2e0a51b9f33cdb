//! Photo methods: `/api/photo/get-replace-token`, `/api/photo/upload` and
//! `/api/photo/replace`.

use super::call::ApiRequest;
use super::metadata::metadata_from;
use super::params::TokenTerms;
use crate::context::Context;
use crate::domain::{PhotoId, PhotoSecret, unix_now};
use crate::envelope::Success;
use crate::error::ApiError;
use crate::http::body_stream;
use crate::store::{NewPhoto, TokenPurpose};
use crate::upload::{Form, StoredFile};

/// `/api/photo/get-replace-token`.
#[tracing::instrument(skip_all, fields(photo_id))]
pub async fn get_replace_token(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let params = &request.params;
    let photo_id = params.single("photo_id")?.unwrap_or_default();
    tracing::Span::current().record("photo_id", photo_id);
    let terms = TokenTerms::from_params(params, ctx)?;
    // Missing, empty, malformed or unknown: one answer, which names no
    // parameter rule a guesser could learn from.
    let photo_id: PhotoId = photo_id.parse().map_err(|_| ApiError::NoSuchPhoto)?;
    let grant = terms.grant(TokenPurpose::Replace { photo_id }, &request.caller);
    if !ctx.state.issue_token(grant.clone()).await? {
        return Err(ApiError::NoSuchPhoto);
    }
    tracing::info!(token = ?grant.token, terms.max_uploads, terms.valid_minutes, "replace token issued");
    let mut fields =
        vec![("replace_token".into(), grant.token.to_string()), ("photo_id".into(), photo_id.to_string())];
    fields.extend(terms.fields());
    Ok(Success {
        message: "The replace token is ready to use".to_owned(),
        object_name: "replacetoken",
        fields,
        list: None,
        lists: Vec::new(),
    })
}

/// Receives the multipart body of a signed upload or replace: the fields
/// up to the file (a file that comes before `ready` holds waits in the
/// spool), what `existing` finds from them, the stored file, then the
/// fields after it. Once the body is read, its text fields join the
/// request's parameters (they may choose the answer's format).
async fn receive_file<T>(
    ctx: &Context,
    request: &mut ApiRequest,
    ready: impl Fn(&[(String, String)]) -> bool,
    existing: impl AsyncFnOnce(&[(String, String)]) -> Result<T, ApiError>,
) -> Result<(T, StoredFile), ApiError> {
    let Some((body, boundary)) = request.multipart.take() else { return Err(ApiError::NoFile) };
    let Some(_receiving) = ctx.try_begin_upload() else {
        return Err(ApiError::Unavailable("limits.max_concurrent_uploads reached".into()));
    };
    let mut form = Form::new(body_stream(body, ctx.body_idle_timeout()), &boundary, ctx.multipart_limits());
    let file = form.read_to_file(&ctx.spool_dir(), ready).await?;
    let found = existing(form.fields()).await?;
    let Some(file) = file else {
        request.params.extend(form.fields().iter().cloned());
        return Err(ApiError::NoFile);
    };
    let stored = file.store(&ctx.objects, &ctx.cleanup, &ctx.config.limits.allowed_media_types).await?;
    if let Err(e) = form.read_rest().await {
        stored.discard().await;
        return Err(e.into());
    }
    request.params.extend(form.fields().iter().cloned());
    Ok((found, stored))
}

/// The `photo_id`, `tree_id` and `token` fields of an answer.
fn photo_fields(photo_id: PhotoId, tree_id: &str, token: &PhotoSecret) -> Vec<(String, String)> {
    vec![
        ("photo_id".into(), photo_id.to_string()),
        ("tree_id".into(), tree_id.to_owned()),
        ("token".into(), token.as_str().to_owned()),
    ]
}

/// `/api/photo/upload`: a signed multipart upload that creates a photo.
#[tracing::instrument(skip_all)]
pub async fn upload(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let ((), file) = receive_file(ctx, request, |_| true, async |_| Ok(())).await?;
    let metadata = match metadata_from(&request.params, &ctx.config.limits) {
        Ok(metadata) => metadata,
        Err(e) => {
            file.discard().await;
            return Err(e);
        }
    };
    let new = NewPhoto {
        tree_id: ctx.config.site.tree_id.clone(),
        metadata,
        first_version: file.version(unix_now()),
    };
    let photo = match ctx.state.create_photo(new).await {
        Ok(photo) => photo,
        Err(e) => {
            file.discard().await;
            return Err(e.into());
        }
    };
    file.keep();
    tracing::info!(photo_id = %photo.photo_id, size = photo.current_version().file.size, "photo created");
    Ok(Success {
        message: "The file was successfully uploaded".to_owned(),
        object_name: "upload",
        fields: photo_fields(photo.photo_id, &photo.tree_id, &photo.token),
        list: None,
        lists: Vec::new(),
    })
}

/// `/api/photo/replace`: a signed multipart upload of a new version of an
/// existing photo (`photo_id` in the query or as a field before the file).
#[tracing::instrument(skip_all)]
pub async fn replace(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let from_query = request.params.single("photo_id")?.map(str::to_owned);
    let ids = |fields: &[(String, String)]| {
        let named = fields.iter().filter(|(n, _)| n == "photo_id").map(|(_, v)| v.clone());
        from_query.clone().into_iter().chain(named).collect::<Vec<_>>()
    };
    let existing = async |fields: &[(String, String)]| {
        let id = match ids(fields).as_slice() {
            [] => return Err(ApiError::InvalidInput("photo_id is required".into())),
            [id] => id.parse::<PhotoId>().map_err(|_| ApiError::NoSuchPhoto)?,
            _ => return Err(ApiError::InvalidInput("photo_id is given more than once".into())),
        };
        ctx.state.photo(id).await?.ok_or(ApiError::NoSuchPhoto)
    };
    let (photo, file) = receive_file(ctx, request, |fields| !ids(fields).is_empty(), existing).await?;
    let recorded = match ctx.state.add_version(photo.photo_id, file.version(unix_now())).await {
        Ok(Some(recorded)) => recorded,
        Ok(None) => {
            file.discard().await;
            return Err(ApiError::NoSuchPhoto);
        }
        Err(e) => {
            file.discard().await;
            return Err(e.into());
        }
    };
    file.keep();
    tracing::info!(photo_id = %recorded.photo_id, version = recorded.version.number, "photo replaced");
    Ok(Success {
        message: "The photo was successfully replaced".to_owned(),
        object_name: "photo",
        fields: photo_fields(recorded.photo_id, &recorded.tree_id, &recorded.token),
        list: None,
        lists: Vec::new(),
    })
}
