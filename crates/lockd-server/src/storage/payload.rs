//! Where a payload goes by its size: the one rule for the queue and the
//! stores.
//!
//! A payload of at most [`INLINE_MAX`] bytes is *inline*: held whole and
//! written as an ordinary object, so it shares its write (and, on
//! `disk://`, its group commit) with other objects. The queue writes an
//! inline payload in the same batch as its message record; `disk://` keeps
//! a small blob inside its database. A larger payload streams into a blob
//! and is never held whole. Both read the payload with [`split`], which
//! reads no more than the bound before deciding. (`s3://` uses [`split`]
//! too, with its own bound, to choose between one PUT and a multipart
//! upload.)
//!
//! The formats written under this rule do not change with it: the queue
//! records `payload_inline` in each message, and `disk://` looks for a
//! blob in its database before its blob files, so data written by any
//! earlier version reads back whatever the bound.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::ByteStream;

/// Largest inline payload, in bytes.
pub const INLINE_MAX: usize = 64 * 1024;

/// A payload read far enough to know which side of a bound it is on.
pub enum Split {
    /// All of it: at most the bound.
    Whole(Bytes),
    /// More than the bound: what was read and the rest of the stream.
    Large(Large),
}

/// A payload over the bound, partly read.
pub struct Large {
    /// What was read while it still fitted.
    head: Bytes,
    /// The chunk that crossed the bound.
    next: Bytes,
    /// Everything after it, not read yet.
    rest: ByteStream,
}

impl Large {
    /// The whole payload again, as one stream.
    pub fn into_stream(self) -> ByteStream {
        Box::pin(futures_util::stream::iter([Ok(self.head), Ok(self.next)]).chain(self.rest))
    }
}

/// Reads `body` until it is known to hold more than `max` bytes or ends.
/// A read error is returned as it came.
pub async fn split(mut body: ByteStream, max: usize) -> std::io::Result<Split> {
    let mut head = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if head.len() + chunk.len() > max {
            return Ok(Split::Large(Large {
                head: head.freeze(),
                next: chunk,
                rest: body,
            }));
        }
        head.extend_from_slice(&chunk);
    }
    Ok(Split::Whole(head.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> ByteStream {
        let items: Vec<std::io::Result<Bytes>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Ok(Bytes::from(vec![i as u8; *n])))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn collect(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn splits_at_the_bound_and_keeps_every_byte() {
        // Exactly the bound is inline.
        match split(chunks(&[4, 6]), 10).await.unwrap() {
            Split::Whole(b) => assert_eq!(b.len(), 10),
            Split::Large(_) => panic!("10 bytes fit a bound of 10"),
        }
        match split(chunks(&[]), 10).await.unwrap() {
            Split::Whole(b) => assert!(b.is_empty()),
            Split::Large(_) => panic!("empty is inline"),
        }
        // One byte over streams, in order, whole.
        let want = collect(chunks(&[4, 6, 1, 3])).await;
        match split(chunks(&[4, 6, 1, 3]), 10).await.unwrap() {
            Split::Large(l) => assert_eq!(collect(l.into_stream()).await, want),
            Split::Whole(_) => panic!("14 bytes do not fit a bound of 10"),
        }
    }

    #[tokio::test]
    async fn a_read_error_comes_back() {
        let s: ByteStream = Box::pin(futures_util::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("cut")),
        ]));
        assert!(split(s, 10).await.is_err());
    }
}
