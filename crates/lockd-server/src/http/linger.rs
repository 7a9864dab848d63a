//! A lingering close for server connections.
//!
//! When the server closes a connection while the client is still sending
//! (a refused upload, a request body past the drain bound of
//! [`super::drain`]), closing the socket with unread bytes in it makes the
//! kernel reset the connection (TCP) or fail the client's next write
//! (`EPIPE` on a Unix socket). Either way the client may lose the answer
//! it was about to read.
//!
//! [`Linger`] wraps a connection's stream. Its shutdown first half-closes
//! (the client reads the whole response, then end of stream), then reads
//! and discards whatever the client still sends until it closes its side,
//! for at most [`LINGER_TIME`] and [`LINGER_MAX_BYTES`]. Only then is the
//! socket dropped. The HTTP server shuts a connection down this way
//! whenever it closes it; a client that closes first ends the wait at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Longest wait, after half-closing, for the client to close its side.
pub const LINGER_TIME: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
pub const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;

enum Phase {
    Open,
    /// Our side is closed; discarding what the client still sends.
    Draining {
        deadline: Pin<Box<Sleep>>,
        discarded: u64,
    },
    Closed,
}

/// A stream whose shutdown lingers; see the module docs.
pub struct Linger<T> {
    io: T,
    phase: Phase,
}

impl<T> Linger<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Linger {
            io,
            phase: Phase::Open,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Linger<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Open => {
                    if let Err(e) = ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
                        // The peer is gone already: nothing to wait for.
                        this.phase = Phase::Closed;
                        return Poll::Ready(Err(e));
                    }
                    this.phase = Phase::Draining {
                        deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
                        discarded: 0,
                    };
                }
                Phase::Draining {
                    deadline,
                    discarded,
                } => {
                    let mut scratch = [0u8; 8192];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *discarded = discarded.saturating_add(buf.filled().len() as u64);
                            if *discarded > LINGER_MAX_BYTES {
                                this.phase = Phase::Closed;
                            }
                        }
                        // End of stream or an error: the client is done.
                        Poll::Ready(_) => this.phase = Phase::Closed,
                        Poll::Pending => {
                            ready!(deadline.as_mut().poll(cx));
                            this.phase = Phase::Closed;
                        }
                    }
                }
                Phase::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// An axum listener whose connections linger on close.
pub struct LingerListener<L>(pub L);

impl<L: axum::serve::Listener> axum::serve::Listener for LingerListener<L> {
    type Io = Linger<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (Linger::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client still writing when the server closes gets the server's
    /// last bytes and a clean end of stream, not a reset.
    #[tokio::test]
    async fn client_reads_the_answer_while_still_sending() {
        let (server, mut client) = tokio::net::UnixStream::pair().expect("pair");
        let mut server = Linger::new(server);
        let srv = tokio::spawn(async move {
            server.write_all(b"answer").await.expect("write");
            server.shutdown().await
        });
        // The client sends more than a socket buffer holds, then reads.
        let junk = vec![b'j'; 4 * 1024 * 1024];
        client
            .write_all(&junk)
            .await
            .expect("client write not refused");
        let mut got = Vec::new();
        let (mut rd, wr) = client.into_split();
        drop(wr);
        rd.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"answer");
        srv.await.expect("join").expect("shutdown");
    }

    /// A client that never closes its side holds the connection no longer
    /// than the linger time.
    #[tokio::test]
    async fn lingering_is_bounded() {
        let (server, _client) = tokio::net::UnixStream::pair().expect("pair");
        let mut server = Linger::new(server);
        let started = std::time::Instant::now();
        server.shutdown().await.expect("shutdown");
        let took = started.elapsed();
        assert!(
            took >= LINGER_TIME,
            "closed before the linger time: {took:?}"
        );
    }
}
