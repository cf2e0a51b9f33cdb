//! `/api/photo/redeem-replace-token` and `/api/photo/redeem-upload-token`:
//! a browser (or Flash, or Resumable.js) posts a file with a token; no
//! OAuth, the token is the credential. A replace token's file becomes a
//! new version of its photo, an upload token's a new photo.
//!
//! # The walk, top to bottom; no step calls back into an earlier one
//! 1. parts: the multipart fields up to the file; a file that comes before
//!    its token waits in the spool ([`Form::read_to_file`]).
//! 2. token: exactly one token of the endpoint's kind, query or field.
//! 3. slot: the client's failure budget, then a [`SlotLease`] of the token.
//! 4. store: the file into the object store as a [`StoredFile`] (deleted
//!    unless kept), then the fields after it.
//! 5. commit: the slot consumed and the version recorded, both or neither.
//! 6. answer: a plain-text refusal, or the outcome told to the site
//!    ([`answer::answer`]). From step 4 on, a failure gives the slot back.

mod answer;
mod budget;
mod chunk;
mod error;
mod slot;

use std::net::{IpAddr, SocketAddr};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::params::file_identifier;
use crate::context::Context;
use crate::domain::{ReplaceToken, unix_now};
use crate::http::{
    Body, BodyKind, body_kind, body_stream, client_address, empty, method_not_allowed, query_params,
};
use crate::store::{ReserveError, TokenGrant, TokenKind, TokenPurpose};
use crate::upload::{FilePart, Form, StoredFile};
use answer::Redeemed;
use budget::FailureBudget;
use chunk::{ChunkParams, chunk_params};
use error::{Failure, RedeemError, Refusal, SiteReturn};
use slot::SlotLease;

/// The field naming the file of a Resumable.js upload, whose metadata
/// `update-upload-token` may have set apart.
const FILE_IDENTIFIER_FIELD: &str = "resumableIdentifier";

/// Serves a redeem endpoint for tokens of `kind`.
pub async fn handle(
    ctx: &Context,
    request: Request<Incoming>,
    peer: SocketAddr,
    kind: TokenKind,
) -> Response<Body> {
    match *request.method() {
        // Resumable.js asks (testChunks) whether a chunk is already there
        // before sending it; anything but 200 means "send it".
        Method::GET | Method::HEAD => empty(StatusCode::NO_CONTENT),
        Method::POST => {
            let ended = redeem(ctx, request, peer, kind).await;
            answer::answer(ctx, kind, ended).await
        }
        _ => method_not_allowed("GET, HEAD, POST"),
    }
}

#[tracing::instrument(skip_all)]
async fn redeem(
    ctx: &Context,
    request: Request<Incoming>,
    peer: SocketAddr,
    kind: TokenKind,
) -> Result<Redeemed, RedeemError> {
    let field = kind.field();
    let (head, body) = request.into_parts();
    let query = query_params(&head.uri);
    let boundary = match body_kind(&head.method, &head.headers) {
        Ok(BodyKind::Multipart(boundary)) => boundary,
        // The libraries' `octet` mode: a raw chunk, its parameters in the query.
        Ok(_) if chunk_params(&query, &[]) != ChunkParams::WholeFile => {
            return Err(Refusal::ChunksNotSupported.into());
        }
        Ok(_) => return Err(Refusal::NotMultipart.into()),
        Err(e) => return Err(Refusal::BadContentType(e.client_message()).into()),
    };
    // Refused before any slot is reserved: the client may simply retry.
    let _receiving = ctx.try_begin_upload().ok_or(Refusal::Busy)?;

    // 1. The parts up to the file.
    let body = body_stream(body, ctx.body_idle_timeout());
    let mut form = Form::new(body, &boundary, ctx.multipart_limits());
    // A token given twice also ends the wait: step 2 refuses it.
    let has_token = |fields: &[(String, String)]| !matches!(the_token(field, &query, fields), Ok(None));
    let file = form.read_to_file(&ctx.spool_dir(), has_token).await.map_err(Refusal::Unreadable)?;

    // 2. The token.
    let token = the_token(field, &query, form.fields())?.ok_or(Refusal::MissingToken)?.to_owned();
    // A file sent in chunks is not taken yet; one chunk that is the whole
    // file is (Resumable.js and flow.js send small files so), answered as
    // a script needs.
    let whole_chunk = match chunk_params(&query, form.fields()) {
        ChunkParams::WholeFile => None,
        ChunkParams::Invalid(message) => return Err(Refusal::BadChunk(message).into()),
        ChunkParams::Chunk(chunk) if chunk.total_size > ctx.config.limits.max_upload_bytes => {
            let limit = ctx.config.limits.max_upload_bytes;
            return Err(Refusal::BadChunk(format!(
                "the file is larger than limits.max_upload_bytes ({limit} bytes)"
            ))
            .into());
        }
        ChunkParams::Chunk(chunk) if chunk.is_whole_file() => Some(chunk),
        ChunkParams::Chunk(_) => return Err(Refusal::ChunksNotSupported.into()),
    };

    // 3. A slot.
    let client = client_address(&head.headers, peer, &ctx.config.server.trusted_proxies);
    let lease = reserve(ctx, &token, kind, client).await?;

    // 4. The bytes, then whatever follows them.
    let stored = match store(ctx, &mut form, file).await {
        Ok(stored) => stored,
        Err(cause) => {
            let site = site_return(field, lease.grant(), &query, form.fields());
            lease.refund().await;
            return Err(RedeemError::after_slot(site, cause));
        }
    };
    // A second token after the file is only seen now.
    if the_token(field, &query, form.fields()).is_err() {
        stored.discard().await;
        lease.refund().await;
        return Err(Refusal::DuplicateToken.into());
    }

    if let Some(chunk) = &whole_chunk
        && stored.size() != chunk.total_size
    {
        let message = format!("the chunk holds {} bytes, not the file's {}", stored.size(), chunk.total_size);
        stored.discard().await;
        lease.refund().await;
        return Err(Refusal::BadChunk(message).into());
    }

    // 5. The commit.
    let mut site = site_return(field, lease.grant(), &query, form.fields());
    site.by_script = whole_chunk.is_some();
    let file = query.iter().chain(form.fields()).find(|(name, _)| name == FILE_IDENTIFIER_FIELD);
    let file = match file.map(|(_, value)| file_identifier(value)).transpose() {
        Ok(file) => file.filter(|f| !f.is_empty()),
        Err(message) => {
            stored.discard().await;
            lease.refund().await;
            return Err(Refusal::BadParameter(message).into());
        }
    };
    match lease.commit(stored.version(unix_now()), file).await {
        Ok(recorded) => {
            stored.keep();
            Ok(Redeemed { site, recorded })
        }
        Err(failed) => {
            if failed.maybe_recorded {
                // A version may point at it: an orphan costs less than a
                // dangling version.
                tracing::warn!(error = %crate::causes::chain(&failed.error), "commit outcome unknown; the stored file is kept");
                stored.keep();
            } else {
                stored.discard().await;
            }
            Err(RedeemError::after_slot(site, Failure::Commit(failed.error)))
        }
    }
}

/// The token `field` carries: given once in the query, once in the form,
/// or once in each with the same value (Resumable.js sends every parameter
/// both ways). Twice in one of them, or two values, is a refusal.
fn the_token<'a>(
    field: &str,
    query: &'a [(String, String)],
    fields: &'a [(String, String)],
) -> Result<Option<&'a str>, Refusal> {
    let named = |pairs: &'a [(String, String)]| {
        pairs.iter().filter(|(name, _)| name == field).map(|(_, value)| value.as_str()).collect::<Vec<_>>()
    };
    match (named(query).as_slice(), named(fields).as_slice()) {
        ([], []) => Ok(None),
        ([token], []) | ([], [token]) => Ok(Some(token)),
        ([in_query], [in_form]) if in_query == in_form => Ok(Some(*in_query)),
        _ => Err(Refusal::DuplicateToken),
    }
}

/// Whom to tell: the token's terms, and the extra parameters repeated to
/// the site: an upload token's own first, then the request's (query, then
/// fields; one given both ways with the same value, once). The site set the token's, so a visitor's parameter of the same
/// name is dropped rather than allowed to stand in for it.
fn site_return(
    field: &str,
    grant: &TokenGrant,
    query: &[(String, String)],
    fields: &[(String, String)],
) -> SiteReturn {
    let own: &[(String, String)] = match &grant.purpose {
        TokenPurpose::Upload { upload } => &upload.extras,
        TokenPurpose::Replace { .. } => &[],
    };
    // A parameter sent both ways with the same value is repeated once.
    let from_form = fields.iter().filter(|pair| !query.contains(pair));
    let from_request = query
        .iter()
        .chain(from_form)
        .filter(|(name, _)| name != field && !own.iter().any(|(set, _)| set == name));
    SiteReturn {
        grant: grant.clone(),
        extras: own.iter().chain(from_request).cloned().collect(),
        by_script: false,
    }
}

/// Step 3: a slot of `token`. An unknown or expired token counts against
/// the client's failure budget (see [`budget`]); a valid one is never
/// refused by it.
async fn reserve(ctx: &Context, token: &str, kind: TokenKind, client: IpAddr) -> Result<SlotLease, Refusal> {
    let lease_secs = ctx.config.state.slot_lease_secs;
    // A malformed token cannot exist: it is simply unknown.
    let reserved = match token.parse::<ReplaceToken>() {
        Ok(token) => SlotLease::reserve(&ctx.state, &ctx.cleanup, &token, kind, lease_secs).await,
        Err(_) => Err(ReserveError::Unknown),
    };
    match reserved {
        Ok(lease) => Ok(lease),
        Err(ReserveError::Unknown | ReserveError::Expired) => {
            let past_budget = FailureBudget::of(ctx, client, unix_now()).count_failure().await;
            Err(if past_budget { Refusal::UnknownTokenPastBudget } else { Refusal::UnknownToken })
        }
        Err(refused) => Err(refused.into()),
    }
}

/// Step 4: the file, then the fields after it (a second file is refused).
async fn store(ctx: &Context, form: &mut Form, file: Option<FilePart>) -> Result<StoredFile, Failure> {
    let file = file.ok_or(Failure::NoFile)?;
    let allowed = &ctx.config.limits.allowed_media_types;
    let stored = file.store(&ctx.objects, &ctx.cleanup, allowed).await.map_err(Failure::Upload)?;
    if let Err(e) = form.read_rest().await {
        stored.discard().await;
        return Err(Failure::Upload(e));
    }
    Ok(stored)
}
