//! A response never cuts off the request it answers.
//!
//! liblockdc sends bodies chunked with `Expect: 100-continue` and writes
//! the terminating `0\r\n\r\n` in a write of its own. A server that answers
//! once it has what it needs (the multipart closing boundary, or nothing
//! at all for an early refusal) and then closes, or leaves the rest in the
//! socket, makes that write fail (`EPIPE` on a Unix socket, a reset on
//! TCP) and the client never reads the answer.
//!
//! A raw client here sends the body with the terminator 50 ms after the
//! rest, on TCP, TLS and a Unix socket, and must then read the whole
//! response; when the server did not say `Connection: close`, the same
//! connection must carry a next request.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lockd_server::control::qrf::{QrfConfig, State};
use lockd_server::control::Sample;
use lockd_server::{start, BoundAddr, ListenProto, RunningServer, ServerConfig};
use lockd_tls::mint::{Ca, LeafSpec, Validity};
use lockd_tls::rustls;
use lockd_tls::{ClientBundle, Permission, ServerBundle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_PAYLOAD: u64 = 1024;

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

enum Transport {
    Tcp,
    Tls(Arc<rustls::ClientConfig>),
    Unix(PathBuf),
}

struct Target {
    server: RunningServer,
    transport: Transport,
    _dir: Option<tempfile::TempDir>,
}

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400))
}

/// Enqueue-refusing limits that a test can engage by feeding samples.
fn config() -> ServerConfig {
    ServerConfig {
        store: "mem://".into(),
        queue_max_payload: MAX_PAYLOAD,
        qrf: QrfConfig {
            queue_soft_limit: 2,
            queue_hard_limit: 4,
            ..Default::default()
        },
        lsf_sample_interval: Duration::ZERO,
        lsf_log_interval: Duration::ZERO,
        ..Default::default()
    }
}

async fn target(kind: &str) -> Target {
    match kind {
        "tcp" => Target {
            server: start(ServerConfig {
                listen: "127.0.0.1:0".into(),
                ..config()
            })
            .await
            .expect("server"),
            transport: Transport::Tcp,
            _dir: None,
        },
        "tls" => {
            let ca = Ca::generate("lockd-ca", year()).expect("ca");
            let leaf = ca
                .issue(&LeafSpec::server("lockd-server", &[], year()))
                .expect("server leaf");
            let bundle =
                ServerBundle::parse(ca.server_bundle(&leaf, false, &BTreeSet::new()).as_bytes())
                    .expect("server bundle");
            let client = ca
                .issue(&LeafSpec::sdk_client(
                    "drain-client",
                    &[("default".to_string(), Permission::ReadWrite)],
                    year(),
                ))
                .expect("client leaf");
            let cb = ClientBundle::parse(ca.client_bundle(&client).as_bytes()).expect("bundle");
            let cfg = lockd_tls::client_config(&cb).expect("client config");
            Target {
                server: start(ServerConfig {
                    listen: "127.0.0.1:0".into(),
                    tls: Some(bundle),
                    ..config()
                })
                .await
                .expect("server"),
                transport: Transport::Tls(cfg),
                _dir: None,
            }
        }
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("lockd.sock");
            Target {
                server: start(ServerConfig {
                    listen: path.display().to_string(),
                    listen_proto: ListenProto::Unix,
                    ..config()
                })
                .await
                .expect("server"),
                transport: Transport::Unix(path),
                _dir: Some(dir),
            }
        }
    }
}

impl Target {
    async fn connect(&self) -> Box<dyn Conn> {
        match (&self.transport, self.server.addr()) {
            (Transport::Tcp, BoundAddr::Tcp(a)) => {
                Box::new(tokio::net::TcpStream::connect(a).await.expect("connect"))
            }
            (Transport::Tls(cfg), BoundAddr::Tcp(a)) => {
                let tcp = tokio::net::TcpStream::connect(a).await.expect("connect");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                Box::new(
                    tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, tcp)
                        .await
                        .expect("handshake"),
                )
            }
            (Transport::Unix(p), _) => {
                Box::new(tokio::net::UnixStream::connect(p).await.expect("connect"))
            }
            _ => unreachable!("transport and address disagree"),
        }
    }
}

/// A response as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    fn error_code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Reads one final response (skipping `100 Continue`), framed by
/// Content-Length or chunked encoding.
async fn read_reply(c: &mut Box<dyn Conn>, buf: &mut Vec<u8>) -> Reply {
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut tmp = [0u8; 4096];
            let n = c.read(&mut tmp).await.expect("read response head");
            assert!(
                n > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        if status == 100 {
            continue;
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = reply.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            fill(c, buf, len).await;
            reply.body = buf.drain(..len).collect();
        } else if reply
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(c, buf, buf.len() + 1).await;
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                        .expect("chunk size");
                buf.drain(..line_end + 2);
                fill(c, buf, size + 2).await;
                reply.body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        return reply;
    }
}

async fn fill(c: &mut Box<dyn Conn>, buf: &mut Vec<u8>, want: usize) {
    while buf.len() < want {
        let mut tmp = [0u8; 8192];
        let n = c.read(&mut tmp).await.expect("read response body");
        assert!(n > 0, "connection closed inside a response");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn multipart(meta: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--XX\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n\
         --XX\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\r\n--XX--\r\n");
    b
}

/// Sends head and body chunks, then the terminating chunk in a second
/// write 50 ms later, as liblockdc does; then reads the response.
async fn send_split(
    c: &mut Box<dyn Conn>,
    path: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
) -> Reply {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: lockd\r\nContent-Type: {content_type}\r\n\
         Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n{extra}\r\n"
    );
    let mut first = head.into_bytes();
    for part in body.chunks(16 * 1024) {
        first.extend(chunk(part));
    }
    c.write_all(&first).await.expect("write head and body");
    c.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"0\r\n\r\n")
        .await
        .expect("the terminating chunk is accepted, not refused");
    c.flush().await.expect("flush terminator");
    read_reply(c, &mut Vec::new()).await
}

/// Sends a body with a declared length, the last 5 bytes in a second write
/// 50 ms later; then reads the response.
async fn send_declared(
    c: &mut Box<dyn Conn>,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: lockd\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let (first, last) = body.split_at(body.len() - 5);
    c.write_all(head.as_bytes()).await.expect("write head");
    c.write_all(first).await.expect("write body");
    c.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(last)
        .await
        .expect("the last bytes are accepted, not refused");
    c.flush().await.expect("flush the rest");
    read_reply(c, &mut Vec::new()).await
}

/// The next request on the same connection is served.
async fn still_usable(c: &mut Box<dyn Conn>, what: &str) {
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: lockd\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{what}: next request not accepted: {e}"));
    let r = read_reply(c, &mut Vec::new()).await;
    assert_eq!(r.status, 200, "{what}: next request on the connection");
}

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The server must close (a remainder past the drain bound).
    must_close: bool,
}

fn enqueue_case(name: &'static str, meta: &str, payload: &[u8], status: u16) -> Case {
    Case {
        name,
        path: "/v1/queue/enqueue",
        content_type: "multipart/related; boundary=XX",
        extra: "",
        body: multipart(meta, payload),
        status,
        code: "",
        must_close: false,
    }
}

async fn run(t: &Target, case: Case) {
    let mut c = t.connect().await;
    let r = send_split(&mut c, case.path, case.content_type, case.extra, &case.body).await;
    assert_eq!(
        r.status,
        case.status,
        "{}: {:?}",
        case.name,
        String::from_utf8_lossy(&r.body)
    );
    if !case.code.is_empty() {
        assert_eq!(r.error_code(), case.code, "{}", case.name);
    }
    if case.must_close {
        assert!(
            r.closes(),
            "{}: a long remainder closes the connection",
            case.name
        );
    } else {
        assert!(!r.closes(), "{}: the connection is kept", case.name);
        still_usable(&mut c, case.name).await;
    }
}

async fn all_cases(kind: &str) {
    let t = target(kind).await;
    let meta = r#"{"queue":"jobs"}"#;
    let mut accepted = enqueue_case("enqueue accepted", meta, b"hello", 200);
    accepted.code = "";
    run(&t, accepted).await;
    let mut missing = enqueue_case(
        "enqueue refused: no queue",
        r#"{"queue":""}"#,
        b"hello",
        400,
    );
    missing.code = "missing_queue";
    run(&t, missing).await;
    // A payload past --queue-max-payload is `400 invalid_body` (PROTOCOL.md
    // has no 413 for enqueue), refused while the payload is still coming.
    let mut too_large = enqueue_case(
        "enqueue refused: payload too large",
        meta,
        &vec![b'p'; 4 * MAX_PAYLOAD as usize],
        400,
    );
    too_large.code = "invalid_body";
    run(&t, too_large).await;
    let mut huge = enqueue_case(
        "enqueue refused: payload far past the drain bound",
        meta,
        &vec![b'p'; 1024 * 1024],
        400,
    );
    huge.must_close = true;
    run(&t, huge).await;
    // A declared length past the limit: 413 before the body is read; the
    // server closes, lingering, so the client still writes and reads.
    let mut c = t.connect().await;
    let big = multipart(meta, &vec![b'p'; 2 * 1024 * 1024]);
    let r = send_declared(
        &mut c,
        "/v1/queue/enqueue",
        "multipart/related; boundary=XX",
        &big,
    )
    .await;
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "request_too_large");
    assert!(r.closes(), "a refused declared body closes the connection");
    run(
        &t,
        Case {
            name: "update refused before its body is read",
            path: "/v1/update?key=orders",
            content_type: "application/json",
            extra: "",
            body: br#"{"status":"shipped"}"#.to_vec(),
            status: 400,
            code: "missing_lease",
            must_close: false,
        },
    )
    .await;

    // Producers in flight past the hard limit: enqueue is refused by the
    // perimeter defence before any handler reads the body.
    let ctl = t.server.control().clone();
    ctl.qrf.observe(&Sample {
        producers: 4,
        memory_includes_reclaimable: true,
        ..Sample::default()
    });
    assert_eq!(ctl.qrf.state(), State::Engaged);
    let mut throttled = enqueue_case("enqueue refused: throttled", meta, b"hello", 429);
    throttled.code = "throttled";
    run(&t, throttled).await;
    t.server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn early_answers_leave_the_request_whole_on_tcp() {
    all_cases("tcp").await;
}

#[tokio::test]
async fn early_answers_leave_the_request_whole_on_tls() {
    all_cases("tls").await;
}

#[tokio::test]
async fn early_answers_leave_the_request_whole_on_a_unix_socket() {
    all_cases("unix").await;
}
