//! Photo methods: `/api/photo/get-replace-token`, `/api/photo/upload` and
//! `/api/photo/replace`.

use super::call::ApiRequest;
use crate::context::Context;
use crate::domain::{PhotoId, PhotoSecret, ReplaceToken, unix_now};
use crate::envelope::Success;
use crate::error::ApiError;
use crate::http::{Params, body_stream};
use crate::store::{NewPhoto, PhotoMetadata, TokenGrant};
use crate::upload::{Form, StoredFile};

/// `valid_minutes`: default and bounds, from 23's documentation.
const VALID_MINUTES: IntegerRule = IntegerRule { name: "valid_minutes", default: 180, min: 15, max: 1440 };
/// `max_uploads`: default and bounds.
const MAX_UPLOADS: IntegerRule = IntegerRule { name: "max_uploads", default: 1, min: 1, max: 100 };

/// An optional integer parameter that is clamped into its range.
struct IntegerRule {
    name: &'static str,
    default: u32,
    min: u32,
    max: u32,
}

impl IntegerRule {
    /// Absent or empty: the default. An integer (any sign, any size): clamped
    /// into `min..=max`. Anything else (`1.5`, `ten`, ` 5`): `invalid_input`.
    fn apply(&self, value: Option<&str>) -> Result<u32, ApiError> {
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

/// `return_url`: absent or empty means none. Otherwise an absolute `http` or
/// `https` URL with a host, no credentials, no whitespace or control
/// characters, within the length limit, and on an allowed host when the
/// operator configured a list. The URL is kept exactly as given.
fn parse_return_url(value: Option<&str>, ctx: &Context) -> Result<Option<String>, ApiError> {
    let Some(raw) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let invalid = |why: &str| Err(ApiError::InvalidInput(format!("return_url {why}")));
    let config = &ctx.config.callback;
    if raw.len() > config.max_return_url_bytes {
        return invalid(&format!("is longer than {} bytes", config.max_return_url_bytes));
    }
    // The URL parser would silently drop tabs and newlines; refuse them.
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return invalid("contains whitespace or control characters");
    }
    // The URL parser forgives `http:///host` and backslashes, as browsers
    // do; a return URL must say exactly what it means, so refuse them.
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
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return invalid("has no host");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return invalid("must not contain credentials");
    }
    if !ctx.callbacks.allowed_hosts().permits(host) {
        return invalid("names a host that is not allowed");
    }
    Ok(Some(raw.to_owned()))
}

fn flag(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.single(name)? {
        None | Some("") | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(_) => Err(ApiError::InvalidInput(format!("{name} must be 0 or 1"))),
    }
}

/// `/api/photo/get-replace-token`.
#[tracing::instrument(skip_all, fields(photo_id))]
pub async fn get_replace_token(ctx: &Context, request: &mut ApiRequest) -> Result<Success, ApiError> {
    let params = &request.params;
    let photo_id = params.single("photo_id")?.unwrap_or_default();
    tracing::Span::current().record("photo_id", photo_id);
    let return_url = parse_return_url(params.single("return_url")?, ctx)?;
    let background_return = flag(params, "background_return_p")?;
    let valid_minutes = VALID_MINUTES.apply(params.single("valid_minutes")?)?;
    let max_uploads = MAX_UPLOADS.apply(params.single("max_uploads")?)?;
    // Missing, empty, malformed or unknown: one answer, which names no
    // parameter rule a guesser could learn from.
    let photo_id: PhotoId = photo_id.parse().map_err(|_| ApiError::NoSuchPhoto)?;
    let issued_at = unix_now();
    let grant = TokenGrant {
        token: ReplaceToken::generate(),
        photo_id,
        max_uploads,
        issued_at,
        valid_until: issued_at + u64::from(valid_minutes) * 60,
        return_url,
        background_return,
        issued_to: request.caller.consumer_key.clone().unwrap_or_default(),
    };
    if !ctx.state.issue_token(grant.clone()).await? {
        return Err(ApiError::NoSuchPhoto);
    }
    tracing::info!(token = ?grant.token, max_uploads, valid_minutes, "replace token issued");
    Ok(Success {
        message: "The replace token is ready to use".to_owned(),
        object_name: "replacetoken",
        fields: vec![
            ("replace_token".into(), grant.token.to_string()),
            ("photo_id".into(), photo_id.to_string()),
            ("max_uploads".into(), max_uploads.to_string()),
            ("valid_minutes".into(), valid_minutes.to_string()),
            ("valid_until".into(), grant.valid_until.to_string()),
            ("return_url".into(), grant.return_url.unwrap_or_default()),
        ],
        list: None,
    })
}

/// 23 strips all HTML tags from titles; this also bounds their length.
fn clean_title(raw: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in raw.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag && !c.is_control() => out.push(c),
            _ => {}
        }
    }
    out.trim().chars().take(255).collect()
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
    let title = request.params.first("title").map(clean_title).filter(|t| !t.is_empty());
    let new = NewPhoto {
        tree_id: ctx.config.site.tree_id.clone(),
        metadata: PhotoMetadata { title, ..PhotoMetadata::default() },
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
    })
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

    #[test]
    fn titles_lose_tags_and_control_characters() {
        assert_eq!(clean_title(" <b>Hello</b> <script>x</script>world\u{7} "), "Hello xworld");
    }
}
