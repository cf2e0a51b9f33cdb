//! Raw `multipart/form-data` bodies, byte for byte, for the tests that need
//! more than `reqwest`'s forms: bodies sent in pieces over a socket
//! (stalled, cut or reset in the middle of the file), declared longer than
//! they are, or followed by deliberately malformed bytes
//! ([`MultipartBody::raw`]), and the HTTP/1.1 request heads that go before
//! them. Shared by the test binaries through `#[path]`.
#![allow(dead_code)] // each binary uses its own subset

use std::fmt::Display;

/// A multipart body as browsers write it: each complete part ends with
/// CRLF, and the close delimiter `--{boundary}--` and a CRLF end the body.
///
/// A part opened with [`MultipartBody::file_head`] (or
/// [`MultipartBody::field_head`]) is left open: its content is what
/// [`MultipartBody::raw`] appends, or what the test sends over the socket
/// after [`MultipartBody::into_bytes`]; [`MultipartBody::closing`] is then
/// what ends the body.
///
/// `MultipartBody::new("B").field("replace_token", &token).file_head("file", "a.bin")`
/// is, in Rust string notation,
/// `"--B\r\nContent-Disposition: form-data; name=\"replace_token\"\r\n\r\n{token}\r\n"`
/// then `"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n"`.
pub struct MultipartBody {
    boundary: String,
    bytes: Vec<u8>,
    /// The last part is open: no CRLF after its content yet.
    open: bool,
}

impl MultipartBody {
    pub fn new(boundary: &str) -> MultipartBody {
        MultipartBody { boundary: boundary.to_owned(), bytes: Vec::new(), open: false }
    }

    /// A complete text field.
    pub fn field(self, name: &str, value: &str) -> MultipartBody {
        self.field_head(name).raw(value.as_bytes()).close_part()
    }

    /// A complete file part.
    pub fn file(self, name: &str, filename: &str, content: &[u8]) -> MultipartBody {
        self.file_head(name, filename).raw(content).close_part()
    }

    /// Opens a text field: its delimiter and headers, up to and including
    /// the blank line; the value follows.
    pub fn field_head(self, name: &str) -> MultipartBody {
        self.part_head(&format!("name=\"{name}\""))
    }

    /// Opens a file part: its delimiter and headers, up to and including
    /// the blank line; the file's bytes follow.
    pub fn file_head(self, name: &str, filename: &str) -> MultipartBody {
        self.part_head(&format!("name=\"{name}\"; filename=\"{filename}\""))
    }

    fn part_head(self, disposition: &str) -> MultipartBody {
        let mut body = self.close_part();
        let head = format!("--{}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n", body.boundary);
        body.bytes.extend_from_slice(head.as_bytes());
        body.open = true;
        body
    }

    fn close_part(mut self) -> MultipartBody {
        if std::mem::take(&mut self.open) {
            self.bytes.extend_from_slice(b"\r\n");
        }
        self
    }

    /// Appends `bytes` as they are: the content of an open part, or bytes
    /// that break the format on purpose.
    pub fn raw(mut self, bytes: &[u8]) -> MultipartBody {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// The bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// What ends the body from here: the CRLF that closes an open part (its
    /// content sent by then), the close delimiter, and a CRLF.
    pub fn closing(&self) -> Vec<u8> {
        let open_part_end: &[u8] = if self.open { b"\r\n" } else { b"" };
        [open_part_end, format!("--{}--\r\n", self.boundary).as_bytes()].concat()
    }

    /// The whole body, ended by [`MultipartBody::closing`].
    pub fn end(self) -> Vec<u8> {
        let closing = self.closing();
        [self.bytes, closing].concat()
    }

    /// The bytes so far, not ended: the head of a body whose rest the test
    /// sends itself (or never sends).
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// `multipart/form-data; boundary=...`.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The HTTP/1.1 head of a POST of a body with this boundary to `path`
    /// at `host`, declaring `content_length` bytes (which need not all be
    /// sent).
    pub fn post_head(&self, path: &str, host: impl Display, content_length: usize) -> String {
        let headers = [("Content-Type", self.content_type()), ("Content-Length", content_length.to_string())];
        post_head(path, host, &headers)
    }
}

/// The head of an HTTP/1.1 POST to `path` at `host`: the request line, the
/// `Host` header, then `headers` in order, and the blank line.
pub fn post_head(path: &str, host: impl Display, headers: &[(&str, impl Display)]) -> String {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}
