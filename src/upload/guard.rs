//! Stream adapters that sit between the request body and multer: they
//! repair one known client defect and bound what multer would otherwise
//! buffer without limit.

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};

/// Puts back the CRLF that RFC 2046 requires before each delimiter when a
/// client leaves it out.
///
/// 23's Ruby sample client builds its multipart body by hand and writes
/// `value--BOUNDARY` where `value\r\n--BOUNDARY` belongs; the original
/// service accepted such bodies. A `--BOUNDARY` that is not at the start of
/// the body and not preceded by CRLF gets one inserted; a well-formed body
/// passes through unchanged (its delimiters all follow a CRLF), and so does
/// content, unless it contains the boundary string itself, which no
/// well-behaved client allows.
pub fn repair_bare_delimiters<S>(
    body: S,
    boundary: &str,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let delimiter = format!("--{boundary}").into_bytes();
    let state = DelimiterRepair { delimiter, held: Vec::new(), last_two: [0; 2], emitted: 0 };
    futures_util::stream::unfold((Box::pin(body), Some(state)), |(mut body, state)| async move {
        let mut state = state?;
        match body.next().await {
            Some(Ok(chunk)) => {
                let out = state.push(&chunk);
                Some((Ok(out), (body, Some(state))))
            }
            Some(Err(e)) => Some((Err(e), (body, None))),
            None => {
                let rest = Bytes::from(std::mem::take(&mut state.held));
                Some((Ok(rest), (body, None)))
            }
        }
    })
    .try_filter(|chunk| std::future::ready(!chunk.is_empty()))
}

struct DelimiterRepair {
    delimiter: Vec<u8>,
    /// The tail of the data seen so far that could be the start of a
    /// delimiter split across chunks; shorter than the delimiter.
    held: Vec<u8>,
    /// The last two bytes already passed on.
    last_two: [u8; 2],
    /// How many bytes of the original body were passed on.
    emitted: u64,
}

impl DelimiterRepair {
    fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        let keep = (self.delimiter.len() - 1).min(data.len());
        let ready = data.len() - keep;
        let mut out = Vec::with_capacity(ready + 16);
        let mut copied = 0;
        for at in memchr::memmem::find_iter(&data, &self.delimiter) {
            if at >= ready {
                break;
            }
            let before = |back: usize| -> u8 {
                if at >= back { data[at - back] } else { self.last_two[2 - (back - at)] }
            };
            let at_body_start = self.emitted == 0 && at == 0;
            let follows_crlf = before(2) == b'\r' && before(1) == b'\n';
            if !(at_body_start || follows_crlf) {
                out.extend_from_slice(&data[copied..at]);
                out.extend_from_slice(b"\r\n");
                copied = at;
            }
        }
        out.extend_from_slice(&data[copied..ready]);
        self.emitted += ready as u64;
        match ready {
            0 => {}
            1 => self.last_two = [self.last_two[1], data[0]],
            _ => self.last_two = [data[ready - 2], data[ready - 1]],
        }
        self.held = data.split_off(ready);
        Bytes::from(out)
    }
}

/// Finds every occurrence of a needle in a stream of chunks, including
/// occurrences split across chunks, reporting the stream offset just past
/// each one.
struct StreamSearcher {
    finder: memchr::memmem::Finder<'static>,
    /// The last `needle.len() - 1` bytes seen.
    tail: Vec<u8>,
    offset: u64,
}

impl StreamSearcher {
    fn new(needle: &[u8]) -> Self {
        StreamSearcher {
            finder: memchr::memmem::Finder::new(needle).into_owned(),
            tail: Vec::new(),
            offset: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8], ends: &mut Vec<u64>) {
        let n = self.finder.needle().len();
        if !self.tail.is_empty() {
            let mut joint = self.tail.clone();
            joint.extend_from_slice(&chunk[..chunk.len().min(n - 1)]);
            let tail_start = self.offset - self.tail.len() as u64;
            for at in self.finder.find_iter(&joint) {
                if at < self.tail.len() && at + n > self.tail.len() {
                    ends.push(tail_start + (at + n) as u64);
                }
            }
        }
        ends.extend(self.finder.find_iter(chunk).map(|at| self.offset + (at + n) as u64));
        self.offset += chunk.len() as u64;
        let keep = n - 1;
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }
}

/// Bounds the non-data regions of a multipart body: the preamble before the
/// first delimiter and each part's header block (from its delimiter to the
/// blank line). multer buffers such a region until it ends, so one that
/// never ends would otherwise grow without bound. Crossing `max_bytes` fails
/// the stream with `InvalidData`. Expects a body whose delimiters all follow
/// a CRLF or start the body (see [`repair_bare_delimiters`]).
pub fn limit_part_headers<S>(
    body: S,
    boundary: &str,
    max_bytes: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let delimiter = format!("--{boundary}");
    let mut limit = HeaderLimit {
        delimiters: StreamSearcher::new(delimiter.as_bytes()),
        closings: StreamSearcher::new(format!("{delimiter}--").as_bytes()),
        blank_lines: StreamSearcher::new(b"\r\n\r\n"),
        open_since: Some(0),
        max_bytes,
    };
    body.and_then(move |chunk| std::future::ready(limit.check(&chunk).map(|()| chunk)))
}

struct HeaderLimit {
    delimiters: StreamSearcher,
    closings: StreamSearcher,
    blank_lines: StreamSearcher,
    /// Where the region being bounded began, if one is open.
    open_since: Option<u64>,
    max_bytes: u64,
}

impl HeaderLimit {
    fn check(&mut self, chunk: &[u8]) -> Result<(), std::io::Error> {
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Event {
            // At equal offsets a closing delimiter (which also matches as a
            // delimiter) must win, so it sorts after the delimiter.
            BlankLine,
            Delimiter,
            Closing,
        }
        let mut ends = Vec::new();
        let mut events = Vec::new();
        self.delimiters.feed(chunk, &mut ends);
        events.extend(ends.drain(..).map(|end| (end, Event::Delimiter)));
        // A closing delimiter ends two bytes after the delimiter it contains.
        self.closings.feed(chunk, &mut ends);
        events.extend(ends.drain(..).map(|end| (end - 2, Event::Closing)));
        self.blank_lines.feed(chunk, &mut ends);
        events.extend(ends.drain(..).map(|end| (end, Event::BlankLine)));
        events.sort();
        for (at, event) in events {
            self.open_since = match event {
                Event::Delimiter => Some(at),
                Event::Closing => None,
                Event::BlankLine => self.open_since.filter(|since| *since >= at),
            };
        }
        let end = self.blank_lines.offset;
        match self.open_since {
            Some(since) if end - since > self.max_bytes => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                PartHeadersTooLarge { limit: self.max_bytes },
            )),
            _ => Ok(()),
        }
    }
}

/// A part's header block (or the preamble) exceeded its limit.
#[derive(Debug, thiserror::Error)]
#[error("a multipart part header block exceeds the limit of {limit} bytes")]
pub struct PartHeadersTooLarge {
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn repaired(chunks: &[&[u8]], boundary: &str) -> Vec<u8> {
        let owned: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let stream = repair_bare_delimiters(futures_util::stream::iter(owned), boundary);
        let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
        parts.concat()
    }

    #[tokio::test]
    async fn well_formed_bodies_pass_through_unchanged_in_any_chunking() {
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv--X\r\n--XY--\r\n";
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(repaired(&[a, b], "XY").await, body.to_vec(), "split at {split}");
        }
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(repaired(&bytewise, "XY").await, body.to_vec());
    }

    #[tokio::test]
    async fn a_missing_crlf_before_a_delimiter_is_put_back_in_any_chunking() {
        let bare =
            b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue--XY\r\nrest\n--XY--\r\n\r\n";
        let fixed = b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n--XY\r\nrest\n\r\n--XY--\r\n\r\n";
        for split in 0..bare.len() {
            let (a, b) = bare.split_at(split);
            assert_eq!(repaired(&[a, b], "XY").await, fixed.to_vec(), "split at {split}");
        }
        let bytewise: Vec<&[u8]> = bare.chunks(1).collect();
        assert_eq!(repaired(&bytewise, "XY").await, fixed.to_vec());
    }

    async fn limited(chunks: &[&[u8]], max: u64) -> Result<Vec<u8>, std::io::Error> {
        let owned: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let parts: Vec<Bytes> =
            limit_part_headers(futures_util::stream::iter(owned), "XY", max).try_collect().await?;
        Ok(parts.concat())
    }

    const WELL_FORMED: &[u8] = b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue that is long enough\r\n--XY\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nv\r\n--XY--\r\nepilogue that is longer than the limit of sixty bytes, which is fine\r\n";

    #[tokio::test]
    async fn header_blocks_within_the_limit_pass_in_any_chunking() {
        for split in 0..WELL_FORMED.len() {
            let (a, b) = WELL_FORMED.split_at(split);
            assert_eq!(limited(&[a, b], 60).await.unwrap(), WELL_FORMED, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = WELL_FORMED.chunks(1).collect();
        assert_eq!(limited(&bytewise, 60).await.unwrap(), WELL_FORMED);
    }

    #[tokio::test]
    async fn a_header_block_without_end_is_cut_at_the_limit() {
        let mut endless = b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 100));
        let chunks: Vec<&[u8]> = endless.chunks(7).collect();
        let error = limited(&chunks, 60).await.unwrap_err();
        assert!(error.get_ref().unwrap().is::<PartHeadersTooLarge>());
        // A long preamble with no delimiter is cut as well.
        let preamble = vec![b'p'; 100];
        assert!(limited(&[&preamble], 60).await.is_err());
    }
}
