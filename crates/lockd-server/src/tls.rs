//! The mTLS listener: accepts TCP connections, runs TLS handshakes off the
//! accept path (a slow or hostile client cannot stall others), and hands
//! finished connections to the HTTP server together with the client's
//! verified identity.
//!
//! A handshake that fails (no client certificate, wrong CA, expired,
//! missing clientAuth usage, revoked serial) closes the connection before
//! any request is read; so does a verified certificate whose identity
//! cannot be read (it is never served without authorization). With a
//! `--tc-trust-dir`, certificates of its CAs are admitted too and marked
//! when they do not also chain to the server's CA (coordinator calls
//! only, see `http::tc_auth`). A plain-HTTP request sent to the TLS port gets a
//! `400` explaining the mistake, then the connection closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::http::linger::Linger;
use crate::http::Peer;
use lockd_tls::rustls;
use lockd_tls::{Identity, TrustPool};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to start theirs.
const MAX_HANDSHAKES: usize = 1024;

/// What Go's HTTPS server answers to plain HTTP, so clients see the same.
const PLAIN_HTTP_REPLY: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// A TLS connection and the identity its client certificate proved.
pub struct TlsConn {
    stream: TlsStream<Linger<TcpStream>>,
    peer: Peer,
}

/// What the listener needs: the rustls configuration and, when it admits
/// client certificates of CAs besides the server's own (the
/// `--tc-trust-dir` CAs), the server's own CAs, to mark the certificates
/// that chain only to the others (see [`Peer::coordinator_only`]).
#[derive(Clone)]
pub struct TlsSetup {
    /// The server's TLS configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// The server bundle's CAs, when the handshake admits others too.
    pub home: Option<TrustPool>,
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// An axum listener yielding handshaken TLS connections.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; stops when `stop` turns true.
    pub fn new(tcp: TcpListener, setup: TlsSetup, stop: watch::Receiver<bool>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(setup.config);
        let home = setup.home.map(Arc::new);
        tokio::spawn(accept_loop(tcp, acceptor, home, tx, stop));
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop has stopped (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl crate::http::serve::Accepted for TlsConn {
    fn peer(&self) -> Peer {
        self.peer.clone()
    }

    fn h2(&self) -> bool {
        self.stream.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    home: Option<Arc<TrustPool>>,
    tx: mpsc::Sender<(TlsConn, SocketAddr)>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped(&mut stop) => return,
        };
        let (sock, addr) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let home = home.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                handshake(&acceptor, home.as_deref(), sock, addr),
            )
            .await
            {
                Ok(Some(conn)) => {
                    let _ = tx.send((conn, addr)).await;
                }
                Ok(None) => {}
                Err(_) => tracing::debug!(%addr, "tls handshake timed out"),
            }
        });
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn handshake(
    acceptor: &TlsAcceptor,
    home: Option<&TrustPool>,
    sock: TcpStream,
    addr: SocketAddr,
) -> Option<TlsConn> {
    // A TLS connection starts with a handshake record (0x16); anything
    // that looks like an HTTP method is someone using http:// by mistake.
    let mut first = [0u8; 1];
    let peeked = sock.peek(&mut first).await;
    // Closes linger, so a client still sending reads the answer.
    let mut sock = Linger::new(sock);
    if let Ok(1) = peeked {
        if first[0].is_ascii_uppercase() {
            tracing::debug!(%addr, "plain HTTP on the TLS port");
            let _ = sock.write_all(PLAIN_HTTP_REPLY).await;
            let _ = sock.shutdown().await;
            return None;
        }
    }
    let stream = match acceptor.accept(sock).await {
        Ok(s) => s,
        Err(e) => {
            log_rejection(addr, &e);
            return None;
        }
    };
    let (_, session) = stream.get_ref();
    let chain = session.peer_certificates().unwrap_or_default();
    if chain.is_empty() {
        // The verifier requires a certificate; without one there is no
        // identity to authorize requests by.
        tracing::warn!(%addr, "tls connection without a client certificate");
        return None;
    }
    let id = match Identity::from_chain(chain) {
        Ok(id) => Arc::new(id),
        Err(e) => {
            // Verified but unreadable: refused, never served unauthorized.
            tracing::warn!(%addr, error = %e, "verified client certificate could not be read");
            return None;
        }
    };
    // Admitted through a --tc-trust-dir CA only: coordinator calls only.
    let coordinator_only = home.is_some_and(|h| !h.accepts_at_handshake(chain));
    Some(TlsConn {
        stream,
        peer: Peer {
            id: Some(id),
            coordinator_only,
        },
    })
}

/// Certificate problems are worth an operator's attention (a revoked or
/// expired client retrying); transport noise is not.
fn log_rejection(addr: SocketAddr, e: &io::Error) {
    let cert_problem = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if cert_problem {
        tracing::warn!(%addr, error = %e, "client certificate rejected");
    } else {
        tracing::debug!(%addr, error = %e, "tls handshake failed");
    }
}
