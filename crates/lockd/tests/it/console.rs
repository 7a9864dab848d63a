//! `--console-listen`: the operator console of the real binary, over
//! HTTP (its JSON and event stream) and in a real headless Chromium
//! driven through chromedriver (the page loads, counters follow the
//! traffic, a dead letter is redriven through the page, a read-only
//! console refuses it).

use std::time::{Duration, Instant};

use crate::BIN;
use lockd_client::{Client, DequeueOptions, EnqueueOptions};
use lockd_testkit::binary::{Lockd, LockdCmd};
use lockd_testkit::free_port;
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A server on `mem://` with its console on a loopback port; `extra`
/// flags are added.
fn server(extra: &[&str]) -> (Lockd, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--console-listen", listen.as_str()];
    args.extend_from_slice(extra);
    let srv = LockdCmd::with_store(BIN, "mem://").args(args).start();
    srv.wait_stderr("console listening");
    (srv, format!("http://{listen}"))
}

fn sdk(srv: &Lockd) -> Client {
    Client::builder().endpoint(srv.base()).build().unwrap()
}

async fn get(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = http().post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Enqueues one message with `max_attempts: 1` on `queue` and fails its
/// one delivery: it is dead-lettered. Returns its id.
async fn dead_letter(client: &Client, queue: &str) -> String {
    let sent = client
        .enqueue(
            queue,
            b"{\"order\":42}".to_vec(),
            EnqueueOptions {
                max_attempts: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut opts = DequeueOptions::new("worker-1");
    opts.block = Some(Duration::from_secs(5));
    let msg = client
        .dequeue(queue, opts)
        .await
        .unwrap()
        .expect("a delivery");
    msg.nack(Duration::ZERO, Some(json!({"msg": "carrier down"})))
        .await
        .unwrap();
    sent.message_id
}

/// A redriven message `id` is delivered from `queue` again (and acked).
async fn expect_back(client: &Client, queue: &str, id: &str) {
    let mut opts = DequeueOptions::new("worker-2");
    opts.block = Some(Duration::from_secs(5));
    let back = client
        .dequeue(queue, opts)
        .await
        .unwrap()
        .expect("redriven");
    assert_eq!(back.id(), id);
    back.ack().await.unwrap();
}

/// The first `n` events of the console's stream, as (name, data).
async fn events(console: &str, n: usize) -> Vec<(String, Value)> {
    let mut resp = http()
        .get(format!("{console}/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            out.push((name, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn console_shows_leases_documents_and_queues_and_redrives_on_loopback() {
    let (srv, console) = server(&[]);
    let client = sdk(&srv);

    // The page: one embedded document that loads nothing from elsewhere.
    let page = http().get(format!("{console}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("lockd console"));

    // A held lease with a committed document, one without a lease.
    let lease = client
        .acquire(lockd_client::AcquireRequest::new("orders/1", "worker-a"))
        .await
        .unwrap();
    lease
        .save(&json!({"status": "paid", "items": [1, 2]}))
        .await
        .unwrap();
    lease.release().await.unwrap();
    let big = "x".repeat(100_000);
    let other = client
        .acquire(lockd_client::AcquireRequest::new("orders/2", "worker-b"))
        .await
        .unwrap();
    other.save(&json!({ "blob": big })).await.unwrap();
    other.release().await.unwrap();
    let held = client
        .acquire(lockd_client::AcquireRequest::new("orders/1", "worker-c"))
        .await
        .unwrap();

    let (st, o) = get(&format!("{console}/api/overview")).await;
    assert_eq!(st, 200, "{o}");
    assert_eq!(o["leases"]["held"], 1, "{o}");
    assert_eq!(o["server"]["store"], "mem://");
    assert_eq!(o["server"]["ha_role"], "active");
    assert_eq!(o["server"]["access"]["mode"], "local");
    let acquires = o["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["endpoint"] == "/v1/acquire")
        .unwrap_or_else(|| panic!("acquires counted: {o}"));
    assert_eq!(acquires["total"], 3);

    // Keys, paged by the last key shown.
    let (st, page1) = get(&format!(
        "{console}/api/keys?namespace=default&prefix=orders/&limit=1"
    ))
    .await;
    assert_eq!(st, 200, "{page1}");
    assert_eq!(page1["keys"][0]["key"], "orders/1");
    assert_eq!(page1["keys"][0]["lease"]["owner"], "worker-c");
    assert_eq!(
        page1["keys"][0]["lease"]["fencing_token"],
        held.fencing_token()
    );
    assert!(page1["keys"][0]["lease"]["expires_in_ms"].as_i64().unwrap() > 0);
    assert_eq!(page1["next"], "orders/1");
    let (_, page2) = get(&format!(
        "{console}/api/keys?namespace=default&prefix=orders/&limit=1&after=orders/1"
    ))
    .await;
    assert_eq!(page2["keys"][0]["key"], "orders/2");
    assert!(page2["keys"][0]["lease"].is_null(), "{page2}");
    assert!(page2["next"].is_null(), "the last page says so: {page2}");
    // Prefixes and keys are taken as the API takes them.
    let (_, upper) = get(&format!(
        "{console}/api/keys?namespace=default&prefix=/ORDERS/&limit=5"
    ))
    .await;
    assert_eq!(upper["keys"].as_array().map(Vec::len), Some(2), "{upper}");
    let (_, k1) = get(&format!(
        "{console}/api/key?namespace=default&key=/Orders/1"
    ))
    .await;
    assert_eq!(k1["key"], "orders/1", "{k1}");
    assert_eq!(k1["exists"], true, "{k1}");

    // One key: lease, document (pretty), version and etag.
    let (_, k) = get(&format!("{console}/api/key?namespace=default&key=orders/1")).await;
    assert_eq!(k["lease"]["owner"], "worker-c", "{k}");
    assert_eq!(k["version"], 1);
    let doc = &k["document"];
    assert_eq!(doc["truncated"], false);
    let shown: Value = serde_json::from_str(doc["text"].as_str().unwrap()).unwrap();
    assert_eq!(shown, json!({"status": "paid", "items": [1, 2]}));
    assert!(
        doc["text"].as_str().unwrap().contains("\n  "),
        "pretty: {doc}"
    );
    // A large document is cut, and downloads whole.
    let (_, k2) = get(&format!("{console}/api/key?namespace=default&key=orders/2")).await;
    assert_eq!(
        k2["document"]["truncated"], true,
        "{}",
        k2["document"]["bytes"]
    );
    assert_eq!(k2["document"]["text"].as_str().unwrap().len(), 64 * 1024);
    let whole = http()
        .get(format!(
            "{console}/api/key/document?namespace=default&key=orders/2"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("orders_2.json"));
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(whole["blob"].as_str().unwrap().len(), 100_000);
    // Bad addresses are clear 400s; a key never acquired says so.
    let (st, e) = get(&format!("{console}/api/key?namespace=default")).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_request")));
    let (st, e) = get(&format!("{console}/api/keys?namespace=Bad%20NS!")).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    let (_, none) = get(&format!("{console}/api/key?namespace=default&key=nobody")).await;
    assert_eq!(none["exists"], false);

    // The event stream: an overview at once, then every second, with
    // requests per second once there are two.
    let evs = events(&console, 2).await;
    assert!(evs.iter().all(|(name, _)| name == "overview"));
    assert_eq!(evs[1].1["leases"]["held"], 1);

    // A dead letter shows up, and the console moves it back.
    let id = dead_letter(&client, "jobs").await;
    let (_, q) = get(&format!("{console}/api/queue?namespace=default&queue=jobs")).await;
    assert_eq!(q["dead_letters"][0]["id"], id, "{q}");
    assert_eq!(q["messages"], 0);
    let (_, qs) = get(&format!("{console}/api/queues")).await;
    let row = qs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["queue"] == "jobs")
        .cloned()
        .unwrap_or_else(|| panic!("jobs listed: {qs}"));
    assert_eq!(row["dead_lettered"], 1);
    let (st, moved) = post(
        &format!("{console}/api/queue/redrive"),
        &json!({"namespace": "default", "queue": "jobs", "ids": [id]}),
    )
    .await;
    assert_eq!(st, 200, "{moved}");
    assert_eq!(moved["moved"], json!([id]));
    srv.wait_stderr("dead letters redriven");
    let log = srv.stderr();
    assert!(log.contains("local operator (no mTLS)"), "{log}");
    expect_back(&client, "jobs", &id).await;

    // What a page of another site could send through a browser.
    let port = console.rsplit(':').next().unwrap();
    let rebound = http()
        .get(format!("{console}/api/overview"))
        .header("host", format!("evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    let form = http()
        .post(format!("{console}/api/queue/redrive"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("namespace=default&queue=jobs&all=true")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 403);
    let cross = http()
        .post(format!("{console}/api/queue/redrive"))
        .header("origin", "http://evil.example")
        .json(&json!({"queue": "jobs", "all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let (st, e) = post(
        &format!("{console}/api/queue/redrive"),
        &json!({"queue": "jobs"}),
    )
    .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_request")));
    held.release().await.unwrap();
    srv.terminate();
}

/// `LOCKD_CONSOLE_*` set from the environment: a read-only console
/// refuses changes, and its namespace is the server's default.
#[tokio::test]
async fn a_read_only_console_from_the_environment_refuses_changes() {
    let port = free_port();
    let srv = LockdCmd::with_store(BIN, "mem://")
        .env("LOCKD_CONSOLE_LISTEN", &format!("127.0.0.1:{port}"))
        .env("LOCKD_CONSOLE_READ_ONLY", "true")
        .env("LOCKD_DEFAULT_NAMESPACE", "ops")
        .start();
    srv.wait_stderr("console listening");
    let console = format!("http://127.0.0.1:{port}");
    let client = sdk(&srv);
    let id = dead_letter(&client, "jobs").await;
    let (_, o) = get(&format!("{console}/api/overview")).await;
    assert_eq!(o["server"]["access"]["mode"], "read_only", "{o}");
    assert_eq!(o["server"]["default_namespace"], "ops", "{o}");
    let (st, e) = post(
        &format!("{console}/api/queue/redrive"),
        &json!({"queue": "jobs", "all": true}),
    )
    .await;
    assert_eq!((st, e["error"].as_str()), (403, Some("console_read_only")));
    let log = srv.wait_stderr("console: redrive refused");
    assert!(log.contains("anonymous (no mTLS)"), "{log}");
    // Nothing moved (and a queue named without a namespace is the
    // server's default namespace's).
    let (_, q) = get(&format!("{console}/api/queue?queue=jobs")).await;
    assert_eq!(q["namespace"], "ops", "{q}");
    assert_eq!(q["dead_letters"][0]["id"], id, "{q}");
    srv.terminate();
}

/// A console on a non-loopback address without TLS warns loudly and is
/// read-only.
#[tokio::test]
async fn a_console_on_a_public_address_without_tls_warns_and_is_read_only() {
    let port = free_port();
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args(["--console-listen", &format!("0.0.0.0:{port}")])
        .start();
    let log = srv.wait_stderr("console listening");
    assert!(
        log.contains("NON-LOOPBACK ADDRESS WITHOUT TLS"),
        "a loud warning: {log}"
    );
    let (st, e) = post(
        &format!("http://127.0.0.1:{port}/api/queue/redrive"),
        &json!({"queue": "jobs", "all": true}),
    )
    .await;
    assert_eq!((st, e["error"].as_str()), (403, Some("console_read_only")));
    srv.terminate();
}

// ---------------------------------------------------------------------
// A real browser.

/// chromedriver: from `LOCKD_TEST_CHROMEDRIVER`, else on the PATH. CI
/// installs it (with Debian's chromium) and the test then must run.
fn chromedriver() -> Option<String> {
    if let Ok(p) = std::env::var("LOCKD_TEST_CHROMEDRIVER") {
        return Some(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromedriver"))
            .find(|p| p.exists())
    });
    match found {
        Some(p) => Some(p.display().to_string()),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI runs the browser tests: install chromium and chromium-driver")
        }
        None => None,
    }
}

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a headless Chromium.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start(driver: &str) -> Browser {
        let port = free_port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = http();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ];
        if std::env::var_os("LOCKD_TEST_CHROMIUM_VERBOSE").is_some() {
            args.push("--enable-logging=stderr");
        }
        let mut chrome = json!({ "args": args });
        if let Ok(bin) = std::env::var("LOCKD_TEST_CHROMIUM") {
            chrome["binary"] = json!(bin);
        }
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": chrome}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {resp}"))
            .to_string();
        Browser {
            driver: child,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        let v = self
            .call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        assert!(v.is_null(), "navigating to {url}: {v}");
    }

    /// The element matching a CSS selector, if there is one now.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.get(ELEMENT).and_then(Value::as_str).map(str::to_string)
    }

    async fn text(&self, css: &str) -> Option<String> {
        let el = self.find(css).await?;
        self.call(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .map(str::to_string)
    }

    /// Waits up to 30 s for the text of `css` to satisfy `ok`.
    async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text(css).await.unwrap_or_default();
            if ok(&t) {
                return t;
            }
            if Instant::now() >= deadline {
                let logs = self
                    .call(
                        reqwest::Method::POST,
                        "/se/log",
                        Some(json!({"type": "browser"})),
                    )
                    .await;
                let seen = self
                    .call(
                        reqwest::Method::POST,
                        "/execute/sync",
                        Some(json!({"script": "const e = document.querySelector(arguments[0]); return e ? [e.textContent, getComputedStyle(e.closest('section')).display, innerWidth, innerHeight, document.visibilityState, location.href] : null;", "args": [css]})),
                    )
                    .await;
                let el = self.find(css).await;
                let raw = match &el {
                    Some(el) => {
                        self.call(reqwest::Method::GET, &format!("/element/{el}/text"), None)
                            .await
                    }
                    None => Value::Null,
                };
                panic!(
                    "{css} never passed; last text {t:?}; element {el:?} text {raw}; page {seen}; browser log {logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let el = loop {
            if let Some(el) = self.find(css).await {
                break el;
            }
            assert!(Instant::now() < deadline, "{css} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{el}/click"),
                Some(json!({})),
            )
            .await;
        assert!(v.is_null(), "clicking {css}: {v}");
    }

    /// Accepts the confirmation the page asks for.
    async fn confirm(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.call(reqwest::Method::GET, "/alert/text", None).await;
            if text.is_string() {
                break;
            }
            assert!(Instant::now() < deadline, "no confirmation was asked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.call(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await;
    }

    /// Saves a screenshot as `NAME.png` in `LOCKD_CONSOLE_SCREENSHOTS`
    /// when it is set (`scripts/console-screenshots.sh`).
    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("LOCKD_CONSOLE_SCREENSHOTS") else {
            return;
        };
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = decode_base64(v.as_str().expect("a screenshot"));
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

impl Browser {
    /// Ends the session, so the browser quits before its driver goes.
    async fn close(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let n = chunk.iter().fold(0u32, |acc, &c| (acc << 6) | val(c))
            << (6 * (4 - chunk.len() as u32));
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&got[..3 - pad.min(2)]);
    }
    out
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let Some(driver) = chromedriver() else {
        eprintln!("skipped: no chromedriver (CI installs chromium and chromium-driver)");
        return;
    };
    let (srv, console) = server(&[]);
    let client = sdk(&srv);
    let browser = Browser::start(&driver).await;

    // The overview loads and follows the traffic.
    browser.open(&format!("{console}/")).await;
    browser.wait_text("#leases-held", |t| t == "0").await;
    browser.wait_text("#srv-store", |t| t == "mem://").await;
    let mut leases = Vec::new();
    for i in 0..3 {
        let key = format!("orders/{i}");
        let l = client
            .acquire(lockd_client::AcquireRequest::new(key.clone(), "checkout"))
            .await
            .unwrap();
        l.save(&json!({"order": i, "status": "paid", "items": [{"sku": "A-1", "qty": 2}]}))
            .await
            .unwrap();
        l.release().await.unwrap();
        let l = client
            .acquire(lockd_client::AcquireRequest::new(key, "worker-a"))
            .await
            .unwrap();
        leases.push(l);
    }
    browser.wait_text("#leases-held", |t| t == "3").await;
    let id = dead_letter(&client, "jobs").await;
    browser.wait_text("#queue-dead", |t| t == "1").await;
    browser
        .wait_text("#rates", |t| t.contains("/v1/acquire"))
        .await;
    browser.screenshot("overview").await;

    // Keys: a held key's lease and its document.
    browser.open(&format!("{console}/#keys")).await;
    browser.click("#keys-form button[type=submit]").await;
    browser
        .wait_text("#keys-rows", |t| {
            t.contains("orders/1") && t.contains("worker-a")
        })
        .await;
    browser.click("tr[data-key='orders/1']").await;
    browser
        .wait_text("#key-facts", |t| {
            t.contains("worker-a") && t.contains("fencing token")
        })
        .await;
    browser
        .wait_text("#doc-text", |t| t.contains("\"status\": \"paid\""))
        .await;
    browser.screenshot("keys").await;

    // Queues: the dead letter, redriven through the page.
    browser.open(&format!("{console}/#queues")).await;
    browser.click("tr[data-queue='jobs']").await;
    browser.wait_text("#dead-rows", |t| t.contains(&id)).await;
    browser.screenshot("queues").await;
    browser.click("#dead-rows button.redrive").await;
    browser.confirm().await;
    browser
        .wait_text("#queue-msg", |t| t.contains("redriven") && t.contains(&id))
        .await;
    browser
        .wait_text("#dead-rows", |t| t.contains("no dead letters"))
        .await;
    expect_back(&client, "jobs", &id).await;
    for l in leases {
        l.release().await.unwrap();
    }
    browser.open(&format!("{console}/#overview")).await;
    browser.wait_text("#leases-held", |t| t == "0").await;
    browser.close().await;
    srv.terminate();

    // A read-only console refuses the same click.
    let (srv, console) = server(&["--console-read-only"]);
    let client = sdk(&srv);
    let id = dead_letter(&client, "jobs").await;
    let browser = Browser::start(&driver).await;
    browser.open(&format!("{console}/#queues")).await;
    browser.click("tr[data-queue='jobs']").await;
    browser.wait_text("#dead-rows", |t| t.contains(&id)).await;
    browser.click("#dead-rows button.redrive").await;
    browser.confirm().await;
    browser
        .wait_text("#queue-msg", |t| t.contains("console_read_only"))
        .await;
    browser.wait_text("#dead-rows", |t| t.contains(&id)).await;
    browser.close().await;
    srv.terminate();
}
