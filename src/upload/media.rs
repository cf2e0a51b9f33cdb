//! What a file is, judged from its first bytes rather than from what the
//! client declared, and whether `[limits] allowed_media_types` lets it in.
//!
//! The identified type is also the one recorded with the version and sent
//! to the object store as the object's `Content-Type`, so a client cannot
//! have an HTML or SVG document stored and later served as a photo.

use futures_util::StreamExt;

use crate::storage::ByteStream;

/// How many leading bytes are examined. The signatures recognised here all
/// sit well inside this window.
pub const SNIFF_WINDOW: usize = 8 * 1024;

/// The type of bytes that match no known signature.
pub const UNRECOGNISED: &str = "application/octet-stream";

/// An allow-list of media types: `type/subtype`, `type/*` or `*/*`. In the
/// configuration it is a list of strings, checked when it is read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct MediaTypes {
    /// Lowercase `(type, subtype)`; `*` matches anything.
    patterns: Vec<(String, String)>,
}

impl TryFrom<Vec<String>> for MediaTypes {
    type Error = String;

    fn try_from(list: Vec<String>) -> Result<Self, String> {
        if list.is_empty() {
            return Err("must name at least one media type (\"*/*\" allows any file)".into());
        }
        MediaTypes::parse(&list)
    }
}

impl From<MediaTypes> for Vec<String> {
    fn from(media: MediaTypes) -> Self {
        media.patterns.into_iter().map(|(kind, sub)| format!("{kind}/{sub}")).collect()
    }
}

impl MediaTypes {
    /// Parses the configured list; the error names the offending entry.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        let patterns = list
            .iter()
            .map(|entry| {
                let lower = entry.trim().to_ascii_lowercase();
                let (kind, sub) = lower
                    .split_once('/')
                    .filter(|(k, s)| is_token(k) && is_token(s) && !(*k == "*" && *s != "*"))
                    .ok_or_else(|| {
                        format!("{entry:?} is not a media type like \"image/jpeg\" or \"video/*\"")
                    })?;
                Ok((kind.to_owned(), sub.to_owned()))
            })
            .collect::<Result<_, String>>()?;
        Ok(MediaTypes { patterns })
    }

    /// Whether `media_type` (as [`identify`] names it) is on the list.
    pub fn allows(&self, media_type: &str) -> bool {
        let (kind, sub) = media_type.split_once('/').unwrap_or((media_type, ""));
        self.patterns.iter().any(|(k, s)| (k == "*" || k == kind) && (s == "*" || s == sub))
    }
}

/// Whether `s` is one `type/subtype`, no pattern and nothing around it
/// (so it is safe to send as a header value).
pub fn is_media_type(s: &str) -> bool {
    let no_star = |part: &str| is_token(part) && !part.contains('*');
    s.split_once('/').is_some_and(|(kind, sub)| no_star(kind) && no_star(sub))
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"*!#$&^_.+-".contains(&b))
}

/// The media type of a file that begins with `head`, from its signature.
pub fn identify(head: &[u8]) -> &'static str {
    infer::get(head).map_or(UNRECOGNISED, |kind| kind.mime_type())
}

/// Reads the first [`SNIFF_WINDOW`] bytes of `bytes` (or all of a shorter
/// file) and identifies them; returns the type and the whole stream again,
/// the bytes read so far first. Holds at most the window plus one chunk.
pub async fn sniff(mut bytes: ByteStream) -> std::io::Result<(&'static str, ByteStream)> {
    let mut chunks = Vec::new();
    let mut head = Vec::new();
    while head.len() < SNIFF_WINDOW {
        let Some(chunk) = bytes.next().await else { break };
        let chunk = chunk?;
        let take = chunk.len().min(SNIFF_WINDOW - head.len());
        head.extend_from_slice(&chunk[..take]);
        chunks.push(Ok(chunk));
    }
    let media_type = identify(&head);
    Ok((media_type, Box::pin(futures_util::stream::iter(chunks).chain(bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> MediaTypes {
        MediaTypes::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_match_by_type_and_subtype() {
        let media = list(&["image/*", "Video/MP4"]);
        assert!(media.allows("image/png"));
        assert!(media.allows("video/mp4"));
        assert!(!media.allows("video/webm"));
        assert!(!media.allows(UNRECOGNISED));
        assert!(list(&["*/*"]).allows(UNRECOGNISED));
        assert!(!list(&[]).allows("image/png"));
    }

    #[test]
    fn a_media_type_is_one_type_and_subtype() {
        assert!(is_media_type("video/mp4") && is_media_type("image/svg+xml"));
        for bad in ["", "video", "video/*", "video/mp4; x=1", "video/mp4\r\nX: y", "a/b/c"] {
            assert!(!is_media_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn malformed_entries_are_named() {
        for bad in ["image", "/png", "image/", "*/png", "image/p ng", "image/png/x"] {
            let error = MediaTypes::parse(&[bad.to_owned()]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn signatures_decide_not_names() {
        assert_eq!(identify(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"), "image/jpeg");
        assert_eq!(identify(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "image/png");
        assert_eq!(identify(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"), "video/mp4");
        assert!(!identify(b"<!DOCTYPE html><html><script>alert(1)</script>").starts_with("image/"));
        assert!(
            !identify(b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>").starts_with("image/")
        );
        assert_eq!(identify(b"x"), UNRECOGNISED);
        assert_eq!(identify(b""), UNRECOGNISED);
    }

    #[tokio::test]
    async fn sniffing_gives_back_every_byte_in_order() {
        let chunks: Vec<std::io::Result<bytes::Bytes>> =
            (0..40u8).map(|i| Ok(bytes::Bytes::from(vec![i; 1000]))).collect();
        let (media_type, stream) = sniff(Box::pin(futures_util::stream::iter(chunks))).await.unwrap();
        assert_eq!(media_type, UNRECOGNISED);
        let all: Vec<u8> = stream.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(all.len(), 40_000);
        assert!(all.chunks(1000).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }
}
