//! An incremental parser for the queue delivery format (PROTOCOL.md §6.3):
//! a `multipart/related` body of `meta` (JSON) + `payload` part pairs.
//!
//! Bytes are fed as they arrive ([`DeliveryReader::feed`]) and complete
//! deliveries are taken out as soon as their last byte is in
//! ([`DeliveryReader::next_delivery`]), so the same code reads a whole
//! dequeue response and an endless subscribe stream. Payload parts are cut
//! by their `Content-Length` when they carry one (the server always sends
//! it), otherwise at the next delimiter.

use crate::{DeliveryMeta, QueueMessage};
use bytes::{Buf, Bytes, BytesMut};

/// Largest part header block or delimiter-less stretch we buffer before
/// calling the stream broken (payloads with `Content-Length` are exempt).
const MAX_SCAN: usize = 1 << 20;

/// The `boundary` parameter of a `multipart/*` content type (any subtype:
/// clients send `multipart/related` and `multipart/form-data`), unquoted;
/// `None` when absent, empty or longer than 200 bytes. The one parser of
/// it in the workspace: the server reads enqueue bodies with it, the SDK
/// deliveries.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (k, v) = param.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 200).then(|| v.to_string())
    })
}

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The `name` of its `Content-Disposition` (empty if none).
    pub name: String,
    /// Its body.
    pub body: Bytes,
}

#[derive(Debug)]
enum State {
    /// Before the first delimiter (a preamble is skipped).
    Start,
    /// After a part body: expecting `CRLF--boundary`.
    Delimiter,
    /// After `--boundary`: `--` closes, CRLF opens a part.
    AfterDelimiter,
    /// Part headers up to the empty line.
    Headers,
    /// A part body, of known length or up to the next delimiter.
    Body { name: String, len: Option<usize> },
    /// After the close delimiter (the epilogue is ignored).
    Done,
}

/// Splits a multipart byte stream into parts.
#[derive(Debug)]
pub struct Parser {
    /// `--boundary`.
    dash_boundary: Vec<u8>,
    /// `\r\n--boundary`.
    delimiter: Vec<u8>,
    buf: BytesMut,
    state: State,
    /// Where the next delimiter search in a length-less body resumes.
    scanned: usize,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() || from > haystack.len() - needle.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// `name` and `Content-Length` from a header block.
fn parse_headers(block: &[u8]) -> Result<(String, Option<usize>), String> {
    let text = std::str::from_utf8(block).map_err(|_| "part headers are not UTF-8".to_string())?;
    let mut name = String::new();
    let mut len = None;
    for line in text.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if k.eq_ignore_ascii_case("content-disposition") {
            for param in v.split(';').skip(1) {
                if let Some((pk, pv)) = param.split_once('=') {
                    if pk.trim().eq_ignore_ascii_case("name") {
                        name = pv.trim().trim_matches('"').to_string();
                    }
                }
            }
        } else if k.eq_ignore_ascii_case("content-length") {
            len = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad part Content-Length {:?}", v.trim()))?,
            );
        }
    }
    Ok((name, len))
}

impl Parser {
    /// A parser for `boundary` (without the leading dashes).
    pub fn new(boundary: &str) -> Self {
        let dash_boundary = format!("--{boundary}").into_bytes();
        let mut delimiter = b"\r\n".to_vec();
        delimiter.extend_from_slice(&dash_boundary);
        Self {
            dash_boundary,
            delimiter,
            buf: BytesMut::new(),
            state: State::Start,
            scanned: 0,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Done) {
            self.buf.extend_from_slice(data);
        }
    }

    /// Whether the close delimiter has been seen.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next complete part, `None` if more bytes are needed (or the
    /// body is complete).
    pub fn next_part(&mut self) -> Result<Option<Part>, String> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Start => match find(&self.buf, &self.dash_boundary, 0) {
                    Some(i) => {
                        self.buf.advance(i + self.dash_boundary.len());
                        self.state = State::AfterDelimiter;
                    }
                    None if self.buf.len() > MAX_SCAN => {
                        return Err("no multipart delimiter in the first 1 MiB".into())
                    }
                    None => return Ok(None),
                },
                State::Delimiter => {
                    let n = self.delimiter.len();
                    if self.buf.len() < n {
                        return Ok(None);
                    }
                    if self.buf[..n] != self.delimiter[..] {
                        let shown = String::from_utf8_lossy(&self.buf[..n.min(40)]).into_owned();
                        return Err(format!("expected a delimiter after a part, got {shown:?}"));
                    }
                    self.buf.advance(n);
                    self.state = State::AfterDelimiter;
                }
                State::AfterDelimiter => {
                    // Transport padding (spaces, tabs) may precede the CRLF.
                    let pad = self
                        .buf
                        .iter()
                        .take_while(|b| **b == b' ' || **b == b'\t')
                        .count();
                    if self.buf.len() < pad + 2 {
                        return Ok(None);
                    }
                    match &self.buf[pad..pad + 2] {
                        b"--" => {
                            self.buf.clear();
                            self.state = State::Done;
                            return Ok(None);
                        }
                        b"\r\n" => {
                            self.buf.advance(pad + 2);
                            self.state = State::Headers;
                        }
                        other => {
                            return Err(format!(
                                "bad bytes after a delimiter: {:?}",
                                String::from_utf8_lossy(other)
                            ))
                        }
                    }
                }
                State::Headers => {
                    let (block_len, skip) = if self.buf.starts_with(b"\r\n") {
                        (0, 2)
                    } else {
                        match find(&self.buf, b"\r\n\r\n", 0) {
                            Some(i) => (i, i + 4),
                            None if self.buf.len() > MAX_SCAN => {
                                return Err("part headers longer than 1 MiB".into())
                            }
                            None => return Ok(None),
                        }
                    };
                    let (name, len) = parse_headers(&self.buf[..block_len])?;
                    self.buf.advance(skip);
                    self.scanned = 0;
                    self.state = State::Body { name, len };
                }
                State::Body { name, len } => {
                    let cut = match *len {
                        Some(n) => {
                            if self.buf.len() < n {
                                return Ok(None);
                            }
                            n
                        }
                        None => match find(&self.buf, &self.delimiter, self.scanned) {
                            Some(i) => i,
                            None => {
                                if self.buf.len() > MAX_SCAN {
                                    return Err("part without Content-Length over 1 MiB".into());
                                }
                                // Resume where a delimiter could still start.
                                self.scanned =
                                    self.buf.len().saturating_sub(self.delimiter.len() - 1);
                                return Ok(None);
                            }
                        },
                    };
                    let name = std::mem::take(name);
                    let body = self.buf.split_to(cut).freeze();
                    self.state = State::Delimiter;
                    return Ok(Some(Part { name, body }));
                }
            }
        }
    }
}

/// One delivered message and its payload.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `message` object of the meta part.
    pub message: QueueMessage,
    /// The payload part's bytes.
    pub payload: Bytes,
}

/// Pairs `meta` and `payload` parts into deliveries.
#[derive(Debug)]
pub struct DeliveryReader {
    parser: Parser,
    meta: Option<QueueMessage>,
}

impl DeliveryReader {
    /// A reader for a delivery body with this boundary.
    pub fn new(boundary: &str) -> Self {
        Self {
            parser: Parser::new(boundary),
            meta: None,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.parser.feed(data);
    }

    /// Whether the close delimiter has been seen.
    pub fn is_done(&self) -> bool {
        self.parser.is_done() && self.meta.is_none()
    }

    /// The next complete delivery, `None` if more bytes are needed.
    pub fn next_delivery(&mut self) -> Result<Option<Delivery>, String> {
        loop {
            let Some(part) = self.parser.next_part()? else {
                // A meta part left without a payload at the end of the
                // body: an empty payload (what the Go SDK assumes).
                if self.parser.is_done() {
                    if let Some(message) = self.meta.take() {
                        return Ok(Some(Delivery {
                            message,
                            payload: Bytes::new(),
                        }));
                    }
                }
                return Ok(None);
            };
            match part.name.as_str() {
                "meta" => {
                    let meta: DeliveryMeta = serde_json::from_slice(&part.body)
                        .map_err(|e| format!("undecodable meta part: {e}"))?;
                    if let Some(message) = self.meta.replace(meta.message) {
                        return Ok(Some(Delivery {
                            message,
                            payload: Bytes::new(),
                        }));
                    }
                }
                "payload" | "" => {
                    let message = self
                        .meta
                        .take()
                        .ok_or_else(|| "payload part without a meta part".to_string())?;
                    return Ok(Some(Delivery {
                        message,
                        payload: part.body,
                    }));
                }
                other => return Err(format!("unexpected part {other:?}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_json(id: &str) -> String {
        format!(
            r#"{{"message":{{"queue":"bench","message_id":"{id}","attempts":1,"max_attempts":5,"not_visible_until_unix":1,"visibility_timeout_seconds":30,"payload_bytes":3,"lease_id":"l-{id}","fencing_token":1,"txn_id":"t","meta_etag":"e-{id}"}}}}"#
        )
    }

    /// Two messages as the server writes them (filenames when `indexed`).
    fn body(b: &str, indexed: bool, with_len: bool) -> Vec<u8> {
        let mut out = String::new();
        for (i, id) in ["m1", "m2"].iter().enumerate() {
            if i > 0 {
                out.push_str("\r\n");
            }
            let (mn, pn) = if indexed {
                (
                    format!("form-data; name=\"meta\"; filename=\"meta-{i}.json\""),
                    format!("form-data; name=\"payload\"; filename=\"payload-{i}\""),
                )
            } else {
                (
                    "form-data; name=\"meta\"".to_string(),
                    "form-data; name=\"payload\"".to_string(),
                )
            };
            out.push_str(&format!(
                "--{b}\r\nContent-Disposition: {mn}\r\nContent-Type: application/json\r\n\r\n{}\n",
                meta_json(id)
            ));
            let len = if with_len {
                "Content-Length: 3\r\n"
            } else {
                ""
            };
            out.push_str(&format!(
                "\r\n--{b}\r\nContent-Disposition: {pn}\r\n{len}Content-Type: application/octet-stream\r\n\r\np{i}!"
            ));
        }
        out.push_str(&format!("\r\n--{b}--\r\n"));
        out.into_bytes()
    }

    fn read_all(b: &str, bytes: &[u8], chunk: usize) -> Vec<Delivery> {
        let mut r = DeliveryReader::new(b);
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            r.feed(c);
            while let Some(d) = r.next_delivery().expect("parse") {
                out.push(d);
            }
        }
        assert!(r.is_done());
        out
    }

    #[test]
    fn parses_whole_and_byte_by_byte() {
        let b = "0123abcd";
        for indexed in [false, true] {
            for with_len in [true, false] {
                let raw = body(b, indexed, with_len);
                for chunk in [1, 7, 64, raw.len()] {
                    let got = read_all(b, &raw, chunk);
                    assert_eq!(
                        got.len(),
                        2,
                        "indexed={indexed} len={with_len} chunk={chunk}"
                    );
                    assert_eq!(got[0].message.message_id, "m1");
                    assert_eq!(&got[0].payload[..], b"p0!");
                    assert_eq!(got[1].message.lease_id, "l-m2");
                    assert_eq!(&got[1].payload[..], b"p1!");
                }
            }
        }
    }

    #[test]
    fn delivers_each_message_before_the_stream_ends() {
        let b = "bb";
        let raw = body(b, false, true);
        let text = String::from_utf8(raw.clone()).expect("utf8");
        // Everything up to the second message's opening delimiter.
        let cut = text.find("\r\n--bb\r\nContent-Disposition: form-data; name=\"meta\"");
        let cut = cut.expect("second message");
        let mut r = DeliveryReader::new(b);
        r.feed(&raw[..cut]);
        let first = r.next_delivery().expect("parse").expect("first delivery");
        assert_eq!(first.message.message_id, "m1");
        assert!(r.next_delivery().expect("parse").is_none());
        assert!(!r.is_done());
    }

    #[test]
    fn empty_payload_and_boundary_parsing() {
        let b = "x";
        let raw = format!(
            "--x\r\nContent-Disposition: form-data; name=\"meta\"\r\n\r\n{}\n\r\n--x\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Length: 0\r\n\r\n\r\n--x--\r\n",
            meta_json("e")
        );
        let got = read_all(b, raw.as_bytes(), 5);
        assert_eq!(got.len(), 1);
        assert!(got[0].payload.is_empty());
        assert_eq!(
            boundary_of("multipart/related; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary_of("Multipart/Related;boundary=\"q q\"").as_deref(),
            Some("q q")
        );
        assert!(boundary_of("application/json").is_none());
        assert!(boundary_of("multipart/related").is_none());
    }

    #[test]
    fn rejects_garbage() {
        let mut r = DeliveryReader::new("x");
        r.feed(b"--x\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Length: 1\r\n\r\nz\r\n--x--\r\n");
        assert!(r.next_delivery().is_err());
        let mut p = Parser::new("x");
        p.feed(b"--x\r\nContent-Length: 2\r\n\r\nabXXXXXXXX");
        assert_eq!(p.next_part().expect("part").map(|p| p.body.len()), Some(2));
        assert!(p.next_part().is_err());
    }
}
