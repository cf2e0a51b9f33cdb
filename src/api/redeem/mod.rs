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
mod chunk_bytes;
mod chunked;
mod error;
mod slot;

use std::net::{IpAddr, SocketAddr};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::params::file_identifier;
use crate::context::Context;
use crate::domain::{ReplaceToken, unix_now};
use crate::http::{
    Body, BodyKind, body_kind, body_stream, client_address, empty, method_not_allowed, query_params, text,
};
use crate::storage::ByteStream;
use crate::store::{ReserveError, TokenKind};
use crate::upload::{FilePart, Form, StoredFile};
use answer::{Received, Redeemed};
use budget::reserve_refusal;
use chunk::{Chunk, ChunkParams, chunk_params};
use chunked::{ChunkEnd, ChunkError, ChunkRequest, Tested};
use error::{Failure, RedeemError, Refusal};
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
        // Resumable.js and flow.js ask (testChunks) whether a chunk is
        // already there before sending it; anything but 200 means "send it".
        Method::GET | Method::HEAD => test_chunk(ctx, &request, kind).await,
        // The libraries' `uploadMethod` may be PUT (or PATCH): the same.
        Method::POST | Method::PUT | Method::PATCH => {
            let ended = redeem(ctx, request, peer, kind).await;
            answer::answer(ctx, kind, ended).await
        }
        _ => method_not_allowed("GET, HEAD, POST, PUT, PATCH"),
    }
}

/// A test `GET` of a chunk: `200` stored, `204` not (or not a chunk), a
/// complete file's outcome again, or the refusal every chunk of it gets.
async fn test_chunk(ctx: &Context, request: &Request<Incoming>, kind: TokenKind) -> Response<Body> {
    let query = query_params(request.uri());
    let (Ok(Some(chunk)), Ok(Some(token))) =
        (checked_chunk(ctx, &query, &[]), the_token(kind.field(), &query, &[]))
    else {
        return empty(StatusCode::NO_CONTENT);
    };
    let ended = match chunked::test(ctx, kind, token, &chunk).await {
        Tested::Stored => return text(StatusCode::OK, "ok".into()),
        Tested::Missing => return empty(StatusCode::NO_CONTENT),
        Tested::Completed(file) => {
            let site = answer::site_return(kind.field(), &file.grant, &query, &[], true);
            Ok(Received::File(Box::new(Redeemed { site, recorded: file.recorded, outbox: None })))
        }
        Tested::Ended(error) => Err(chunk_error(kind.field(), error, &query, &[])),
    };
    answer::answer(ctx, kind, ended).await
}

/// The chunk a request's parameters describe, if they describe one; a
/// file over `limits.max_upload_bytes` is refused at any chunk, the first
/// included, before anything is stored.
fn checked_chunk(
    ctx: &Context,
    query: &[(String, String)],
    fields: &[(String, String)],
) -> Result<Option<Chunk>, Refusal> {
    match chunk_params(query, fields) {
        ChunkParams::WholeFile => Ok(None),
        ChunkParams::Invalid(message) => Err(Refusal::BadChunk(message)),
        ChunkParams::Chunk(chunk) if chunk.total_size > ctx.config.limits.max_upload_bytes => {
            let limit = ctx.config.limits.max_upload_bytes;
            Err(Refusal::BadChunk(format!("the file is larger than limits.max_upload_bytes ({limit} bytes)")))
        }
        // Tiny chunks would make a file of millions of them.
        ChunkParams::Chunk(chunk)
            if chunk.chunk_size < ctx.config.limits.min_chunk_bytes && !chunk.is_whole_file() =>
        {
            let limit = ctx.config.limits.min_chunk_bytes;
            Err(Refusal::BadChunk(format!(
                "chunks of {} bytes are smaller than limits.min_chunk_bytes ({limit} bytes)",
                chunk.chunk_size
            )))
        }
        ChunkParams::Chunk(chunk) => Ok(Some(chunk)),
    }
}

#[tracing::instrument(skip_all)]
async fn redeem(
    ctx: &Context,
    request: Request<Incoming>,
    peer: SocketAddr,
    kind: TokenKind,
) -> Result<Received, RedeemError> {
    let field = kind.field();
    let (head, body) = request.into_parts();
    let query = query_params(&head.uri);
    let client = client_address(&head.headers, peer, &ctx.config.server.trusted_proxies);
    let boundary = match body_kind(&head.method, &head.headers) {
        Ok(BodyKind::Multipart(boundary)) => boundary,
        // The libraries' `octet` mode: a raw chunk, its parameters in the query.
        Ok(_) => {
            let chunk = checked_chunk(ctx, &query, &[])?.ok_or(Refusal::NotMultipart)?;
            let _receiving = ctx.try_begin_upload().ok_or(Refusal::Busy)?;
            let token = the_token(field, &query, &[])?.ok_or(Refusal::MissingToken)?.to_owned();
            let bytes: ByteStream = Box::pin(body_stream(body, ctx.body_idle_timeout()));
            let request = ChunkRequest { kind, token, chunk, client, query, fields: Vec::new() };
            return receive_chunk(ctx, &request, bytes).await;
        }
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
    // A chunk, of a file of one chunk or of many: the file is
    // (token, identifier), so a chunk sent again gets the same outcome.
    if let Some(chunk) = checked_chunk(ctx, &query, form.fields())? {
        let file = file.ok_or_else(|| Refusal::BadChunk("the request has no file part".into()))?;
        let (bytes, _) = file.into_stream().await.map_err(Refusal::Unreadable)?;
        let fields = form.fields().to_vec();
        let request = ChunkRequest { kind, token, chunk, client, query, fields };
        return receive_chunk(ctx, &request, bytes).await;
    }
    // The file's identifier, whose metadata `update-upload-token` may have set apart.
    let identifier = query.iter().chain(form.fields()).find(|(name, _)| name == FILE_IDENTIFIER_FIELD);
    let identifier =
        identifier.map(|(_, v)| file_identifier(v)).transpose().map_err(Refusal::BadParameter)?;
    let identifier = identifier.filter(|f| !f.is_empty()).map(str::to_owned);

    // 3. A slot.
    let lease = reserve(ctx, &token, kind, client).await?;

    // 4. The bytes, then whatever follows them.
    let stored = match store(ctx, &mut form, file).await {
        Ok(stored) => stored,
        Err(cause) => {
            let site = answer::site_return(field, lease.grant(), &query, form.fields(), false);
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

    // 5. The commit.
    let site = answer::site_return(field, lease.grant(), &query, form.fields(), false);
    let outbox = answer::outbox_for(ctx, kind, &site, unix_now());
    match lease.commit(stored.version(unix_now()), identifier.as_deref(), &outbox).await {
        Ok(recorded) => {
            stored.keep();
            Ok(Received::File(Box::new(Redeemed { site, recorded, outbox: Some(outbox) })))
        }
        Err(failed) => {
            let failure = Failure::Commit(failed.error);
            if failed.maybe_recorded {
                // A version may point at it: an orphan costs less than a
                // dangling version. And its outbox may be written: the site
                // hears no failure that its success would contradict.
                tracing::warn!(error = ?failure, "commit outcome unknown; the stored file is kept");
                stored.keep();
                return Err(RedeemError::after_slot(site, Failure::Told(failure.error_message())));
            }
            stored.discard().await;
            Err(RedeemError::after_slot(site, failure))
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

/// Receives one chunk of a file sent in chunks and says how it ended.
async fn receive_chunk(
    ctx: &Context,
    request: &ChunkRequest,
    bytes: ByteStream,
) -> Result<Received, RedeemError> {
    let (field, query, fields) = (request.kind.field(), &request.query, &request.fields);
    match chunked::receive(ctx, request, bytes).await {
        Ok(ChunkEnd::Stored) => Ok(Received::ChunkStored),
        Ok(ChunkEnd::File(file)) => {
            let site = answer::site_return(field, &file.grant, query, fields, true);
            Ok(Received::File(Box::new(Redeemed { site, recorded: file.recorded, outbox: file.outbox })))
        }
        Err(error) => Err(chunk_error(field, error, query, fields)),
    }
}

/// How a chunk that did not end well is answered: a refusal, or the
/// file's failure outcome.
fn chunk_error(
    field: &str,
    error: ChunkError,
    query: &[(String, String)],
    fields: &[(String, String)],
) -> RedeemError {
    match error {
        ChunkError::Refused(refusal) => refusal.into(),
        ChunkError::Failed { grant, cause } => {
            RedeemError::after_slot(answer::site_return(field, &grant, query, fields, true), cause)
        }
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
        Err(refused) => Err(reserve_refusal(ctx, client, refused).await),
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
