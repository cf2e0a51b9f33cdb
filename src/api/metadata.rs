//! What a site says of a photo — `title`, `description`, `tags`,
//! `publish`, `album_id`, and for upload tokens `absolute_url` and
//! `user_id` — parsed, bounded and cleaned once, where it arrives.
//!
//! Cleaning is ammonia's (html5ever parses the input the way browsers do):
//! a title, tags and album ids become plain text (every tag removed, the
//! contents of `<script>` and `<style>` too); a description keeps the safe
//! HTML of [`DESCRIPTION_TAGS`] with `href` on links, unless it holds any
//! other tag or attribute, in which case all HTML is stripped. Every
//! answer escapes what it reflects on top of that (XML, JSON, the POST form
//! and callback URLs each have their own escaping).

use std::cell::Cell;
use std::sync::LazyLock;

use html5ever::buffer_queue::BufferQueue;
use html5ever::tendril::StrTendril;
use html5ever::tokenizer::{Token, TokenSink, TokenSinkResult, Tokenizer};

use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::http::Params;
use crate::store::{MetadataUpdate, PhotoMetadata};

/// The tags a description may keep. `a` keeps `href` (http, https or
/// mailto; relative links are removed), no tag keeps anything else.
pub const DESCRIPTION_TAGS: [&str; 12] =
    ["a", "b", "blockquote", "br", "em", "i", "li", "ol", "p", "strong", "u", "ul"];

/// Every tag removed; the text stays HTML-escaped.
static STRIP_ALL: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::empty();
    builder.link_rel(None);
    builder
});

/// The description's safe subset.
static SAFE_DESCRIPTION: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::empty();
    builder
        .tags(DESCRIPTION_TAGS.into_iter().collect())
        .tag_attributes([("a", ["href"].into_iter().collect())].into_iter().collect())
        .generic_attributes(Default::default())
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(None);
    builder
});

/// `raw` as plain text: every tag removed, entities decoded, control
/// characters dropped, surrounding white space trimmed.
pub fn plain_text(raw: &str) -> String {
    let html = STRIP_ALL.clean(raw).to_string();
    // The serializer escapes exactly these four in text; undo them, `&` last.
    let text =
        html.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", "\u{a0}").replace("&amp;", "&");
    text.chars().filter(|c| !c.is_control() || *c == '\n').collect::<String>().trim().to_owned()
}

/// `raw` as a description: its safe HTML kept when that is all it holds,
/// otherwise its text alone (still HTML, escaped).
pub fn description_html(raw: &str) -> String {
    let cleaner = if holds_only_safe_markup(raw) { &*SAFE_DESCRIPTION } else { &*STRIP_ALL };
    cleaner.clean(raw).to_string().trim().to_owned()
}

/// Whether every tag of `raw`, as html5ever's tokenizer reads it (the
/// way ammonia and browsers do), is one of [`DESCRIPTION_TAGS`] with no
/// attribute other than a link's `href`. Comments pass (ammonia drops
/// them); a doctype or processing instruction does not.
fn holds_only_safe_markup(raw: &str) -> bool {
    let mut chunk = StrTendril::new();
    chunk.push_slice(raw);
    let input = BufferQueue::default();
    input.push_back(chunk);
    let tokenizer = Tokenizer::new(SafeMarkup { safe: Cell::new(true) }, Default::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    tokenizer.sink.safe.get()
}

/// A token sink that notes any markup outside the description's subset.
struct SafeMarkup {
    safe: Cell<bool>,
}

impl TokenSink for SafeMarkup {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let safe = match &token {
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                DESCRIPTION_TAGS.contains(&name)
                    && tag.attrs.iter().all(|a| name == "a" && &*a.name.local == "href")
            }
            Token::CharacterTokens(_)
            | Token::NullCharacterToken
            | Token::CommentToken(_)
            | Token::EOFToken
            | Token::ParseError(_) => true,
            Token::DoctypeToken(_) => false,
        };
        if !safe {
            self.safe.set(false);
        }
        TokenSinkResult::Continue
    }
}

fn too_long(name: &str, limit: usize, key: &str) -> ApiError {
    ApiError::InvalidInput(format!("{name} is longer than {limit} bytes (limits.{key})"))
}

/// `publish`: `0` or `1`.
fn publish(value: &str) -> Result<bool, ApiError> {
    match value {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(ApiError::InvalidInput("publish must be 0 or 1".into())),
    }
}

/// `album_id`: one album id or several, comma-separated (23's ids are numbers).
fn album_id(value: &str) -> Result<String, ApiError> {
    let ids: Vec<&str> = value.split(',').map(str::trim).collect();
    if ids.iter().any(|id| id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit())) {
        return Err(ApiError::InvalidInput("album_id must be album ids (numbers), comma-separated".into()));
    }
    Ok(ids.join(","))
}

/// `tags`: 23 separates them by spaces (commas are taken too); at most
/// `limits.max_tags` of them.
fn tags(value: &str, limits: &LimitsConfig) -> Result<String, ApiError> {
    let count = value.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()).count();
    if count > limits.max_tags {
        return Err(ApiError::InvalidInput(format!(
            "tags holds {count} tags; at most {} are allowed (limits.max_tags)",
            limits.max_tags
        )));
    }
    Ok(plain_text(value))
}

/// The metadata fields the update method (and a new upload) may set, each
/// checked and cleaned; only those given are `Some`.
pub fn update_from(params: &Params, limits: &LimitsConfig) -> Result<MetadataUpdate, ApiError> {
    let mut update = MetadataUpdate::default();
    if let Some(title) = params.single("title")? {
        if title.len() > limits.max_title_bytes {
            return Err(too_long("title", limits.max_title_bytes, "max_title_bytes"));
        }
        update.title = Some(plain_text(title));
    }
    if let Some(description) = params.single("description")? {
        if description.len() > limits.max_description_bytes {
            return Err(too_long("description", limits.max_description_bytes, "max_description_bytes"));
        }
        update.description = Some(description_html(description));
    }
    if let Some(value) = params.single("tags")? {
        update.tags = Some(tags(value, limits)?);
    }
    if let Some(value) = params.single("publish")?.filter(|v| !v.is_empty()) {
        update.publish = Some(publish(value)?);
    }
    if let Some(value) = params.single("album_id")?.filter(|v| !v.is_empty()) {
        update.album_id = Some(album_id(value)?);
    }
    let other_bytes =
        [&update.tags, &update.album_id].iter().filter_map(|v| v.as_ref()).map(String::len).sum::<usize>();
    if other_bytes > limits.max_upload_token_bytes {
        return Err(ApiError::InvalidInput(format!(
            "tags and album_id hold {other_bytes} bytes; at most {} are allowed (limits.max_upload_token_bytes)",
            limits.max_upload_token_bytes
        )));
    }
    Ok(update)
}

/// The metadata of a new photo: the defaults, with what `params` gives.
pub fn metadata_from(params: &Params, limits: &LimitsConfig) -> Result<PhotoMetadata, ApiError> {
    let mut metadata = PhotoMetadata::default();
    update_from(params, limits)?.apply_to(&mut metadata);
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_plain_text() {
        assert_eq!(plain_text(" <b>Tom</b> &amp; <i>Jerry</i> "), "Tom & Jerry");
        assert_eq!(plain_text("<script>alert(1)</script>Hi<style>p{}</style>"), "Hi");
        assert_eq!(plain_text("a < b > c"), "a < b > c", "text that only looks like markup is kept");
        assert_eq!(plain_text("<img src=x onerror=alert(1)>caption\u{7}"), "caption");
    }

    #[test]
    fn descriptions_keep_safe_html_or_lose_all_of_it() {
        assert_eq!(description_html("<p>Hi <b>there</b></p>"), "<p>Hi <b>there</b></p>");
        assert_eq!(
            description_html(r#"<a href="https://example.com/x">link</a>"#),
            r#"<a href="https://example.com/x">link</a>"#
        );
        assert_eq!(description_html("<p>Hi <span>there</span></p>"), "Hi there", "a tag not allowed");
        assert_eq!(description_html(r#"<p onclick="x()">Hi</p>"#), "Hi", "an attribute not allowed");
        assert_eq!(description_html("<b>a</b><script>alert(1)</script>"), "a", "script content dropped");
        assert_eq!(
            description_html(r#"<a href="javascript:alert(1)">x</a>"#),
            "<a>x</a>",
            "unsafe URL dropped"
        );
        assert_eq!(description_html("Tom & Jerry <3"), "Tom &amp; Jerry &lt;3", "text stays HTML");
    }

    #[test]
    fn album_ids_and_publish_are_checked() {
        assert_eq!(album_id("12, 34").unwrap(), "12,34");
        assert!(album_id("12,").is_err());
        assert!(album_id("<b>").is_err());
        assert!(publish("yes").is_err());
        assert!(publish("0").is_ok_and(|p| !p));
    }

    #[test]
    fn too_many_tags_are_refused_with_the_limit_named() {
        let limits = LimitsConfig { max_tags: 3, ..LimitsConfig::default() };
        assert_eq!(tags("a b,c", &limits).unwrap(), "a b,c");
        let error = tags("a b c d", &limits).unwrap_err().to_string();
        assert!(error.contains("limits.max_tags"), "{error}");
    }
}
