//! An incremental parser for `text/event-stream` (server-sent events), as
//! `POST /v1/queue/watch` answers (PROTOCOL.md §6.11).
//!
//! Bytes are fed as they arrive, however the network cut them
//! ([`SseParser::feed`]); complete events come out of
//! [`SseParser::next_event`]. Lines end with `\n` or `\r\n`; a blank line
//! ends an event; `:` lines are comments (the server's `: keepalive`);
//! several `data:` lines are joined with `\n`; `id:` is remembered across
//! events, as the SSE specification says. Unknown fields (`retry:`, …) are
//! ignored.

use bytes::BytesMut;

/// Longest line, and largest event, the parser buffers before calling the
/// stream broken.
const MAX_EVENT: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The last `id:` seen on the stream (it carries over), if any.
    pub id: Option<String>,
    /// The `event:` name ("" when the event had none).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Splits an event stream into events.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: BytesMut,
    /// Where the search for the next `\n` resumes.
    scanned: usize,
    id: Option<String>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete event; `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, String> {
        loop {
            let Some(at) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_EVENT {
                    return Err("event stream line longer than 1 MiB".into());
                }
                return Ok(None);
            };
            let end = self.scanned + at;
            let line = self.buf.split_to(end + 1);
            self.scanned = 0;
            let mut line = &line[..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = String::from_utf8_lossy(line);
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                let data = std::mem::take(&mut self.data);
                // An event without data lines is not dispatched.
                if std::mem::take(&mut self.has_data) {
                    return Ok(Some(SseEvent {
                        id: self.id.clone(),
                        event,
                        data,
                    }));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                    if self.data.len() > MAX_EVENT {
                        return Err("event stream event larger than 1 MiB".into());
                    }
                }
                "id" if !value.contains('\0') => self.id = Some(value.to_string()),
                _ => {}
            }
        }
    }

    /// Bytes buffered but not yet part of a complete event.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "id: 1\nevent: queue_watch\ndata: {\"available\":false}\n\n\
                          : keepalive\n\n\
                          id: 2\r\nevent: queue_watch\r\ndata: {\"available\":true,\r\ndata: \"head_message_id\":\"m1\"}\r\n\r\n\
                          retry: 100\nid: 3\ndata:x\n\n";

    fn all(chunk: usize) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in STREAM.as_bytes().chunks(chunk) {
            p.feed(c);
            while let Some(e) = p.next_event().expect("parse") {
                out.push(e);
            }
        }
        assert_eq!(p.pending(), 0, "chunk {chunk}");
        out
    }

    #[test]
    fn events_survive_any_split() {
        let want = vec![
            SseEvent {
                id: Some("1".into()),
                event: "queue_watch".into(),
                data: r#"{"available":false}"#.into(),
            },
            SseEvent {
                id: Some("2".into()),
                event: "queue_watch".into(),
                data: "{\"available\":true,\n\"head_message_id\":\"m1\"}".into(),
            },
            SseEvent {
                id: Some("3".into()),
                event: String::new(),
                data: "x".into(),
            },
        ];
        for chunk in [1, 2, 3, 7, 16, STREAM.len()] {
            assert_eq!(all(chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn incomplete_events_wait_for_their_blank_line() {
        let mut p = SseParser::default();
        p.feed(b"id: 9\nevent: queue_watch\ndata: {}\n");
        assert_eq!(p.next_event().unwrap(), None);
        p.feed(b"\n");
        let e = p.next_event().unwrap().expect("event");
        assert_eq!(e.data, "{}");
        // Comments and data-less events dispatch nothing; the id carries on.
        p.feed(b": keepalive\n\nevent: queue_watch\n\ndata: a\n\n");
        let e = p.next_event().unwrap().expect("event");
        assert_eq!(
            (e.id.as_deref(), e.event.as_str(), e.data.as_str()),
            (Some("9"), "", "a")
        );
        assert_eq!(p.next_event().unwrap(), None);
    }

    #[test]
    fn endless_lines_are_an_error() {
        let mut p = SseParser::default();
        let chunk = vec![b'a'; 64 * 1024];
        let mut failed = false;
        for _ in 0..20 {
            p.feed(&chunk);
            if p.next_event().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a line over 1 MiB is refused");
    }
}
