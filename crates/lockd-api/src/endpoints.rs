//! The endpoint table: every HTTP route of the protocol, once.
//!
//! Each [`Endpoint`] names its path, the methods it answers, the kind of
//! work it is (for back-pressure and drain), the namespace permission a
//! caller's certificate must grant, and the operation name that logs,
//! traces and metrics use. The server builds its router, its
//! back-pressure classification, its authorization and its metric labels
//! from this table, and the SDK takes its paths from it, so adding an
//! endpoint is one entry here plus its handler.
//!
//! ```
//! use lockd_api::endpoints::{self, Kind, Permission};
//! let ep = endpoints::find("/v1/queue/ack").unwrap();
//! assert_eq!(ep.path, endpoints::QUEUE_ACK.path);
//! assert_eq!(ep.kind, Kind::Ack);
//! assert_eq!(ep.permission, Permission::Read);
//! assert_eq!(ep.operation(), "queue.ack");
//! assert!(endpoints::find("/v1/nope").is_none());
//! ```

/// What a request does, for back-pressure and drain decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `enqueue`: adds work.
    Producer,
    /// `dequeue*`, `subscribe*`: takes work.
    Consumer,
    /// `ack`, `nack`, `extend`: finishes work.
    Ack,
    /// `acquire`: starts lock work.
    Acquire,
    /// `keepalive`, `release`, `get`, `update`, `remove`, `metadata`: work
    /// on a lease already held.
    Lock,
    /// Everything else (health, describe, stats, watch, dead letters):
    /// never throttled.
    Other,
}

/// The namespace permission a caller's certificate must grant under mTLS
/// (PROTOCOL.md §1.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// No namespace is touched (health checks).
    None,
    /// Any claim on the namespace (lease operations).
    Any,
    /// Read permission (`r` or `rw`).
    Read,
    /// Write permission (`w` or `rw`).
    Write,
}

/// The HTTP methods an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// Every method reaches the handler, as in the original server
    /// (PROTOCOL.md §1: none of its core handlers checks the method).
    Any,
    /// Only these methods (upper case); others are refused with
    /// `405 method_not_allowed`, with an `Allow` header listing them when
    /// `allow_header` is set.
    Only {
        /// The methods served.
        allowed: &'static [&'static str],
        /// Whether a 405 names them in `Allow`.
        allow_header: bool,
    },
}

impl Methods {
    /// Whether `method` (upper case, as on the wire) is served.
    pub fn allows(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::Only { allowed, .. } => allowed.contains(&method),
        }
    }
}

/// One route of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Position in [`ALL`]: the index of the endpoint's metric series.
    pub slot: usize,
    /// The request path, matched exactly.
    pub path: &'static str,
    /// The methods answered.
    pub methods: Methods,
    /// The kind of work, for back-pressure and drain.
    pub kind: Kind,
    /// The namespace permission required under mTLS. `get` lowers it to
    /// [`Permission::Read`] for public reads.
    pub permission: Permission,
    /// The `sys` of the request's log lines: `api.http.router.<operation>`
    /// (the original server's operation names).
    pub sys: &'static str,
    /// Served by a passive (standby) node; everything else answers
    /// `503 node_passive` there.
    pub on_passive: bool,
}

impl Endpoint {
    /// The operation name: `sys` without its `api.http.router.` prefix
    /// (`acquire`, `queue.dequeue`, `healthz`, …).
    pub fn operation(&self) -> &'static str {
        self.sys.strip_prefix(SYS_PREFIX).unwrap_or(self.sys)
    }
}

/// The prefix of every request's `sys`; alone it is the `sys` of requests
/// to unknown paths.
pub const SYS_PREFIX: &str = "api.http.router.";

/// The `sys` of requests to paths that are not in the table.
pub const SYS_UNKNOWN: &str = "api.http.router";

macro_rules! table {
    ($( $(#[$doc:meta])* $name:ident = $slot:literal : $path:literal, $kind:ident, $perm:ident, $sys:literal $(, $flag:ident)? $([$($m:literal),+] allow_header: $allow:literal)? ; )*) => {
        $(
            $(#[$doc])*
            pub const $name: Endpoint = Endpoint {
                slot: $slot,
                path: $path,
                methods: table!(@methods $([$($m),+] $allow)?),
                kind: Kind::$kind,
                permission: Permission::$perm,
                sys: concat!("api.http.router.", $sys),
                on_passive: table!(@passive $($flag)?),
            };
        )*

        /// Every endpoint, in slot order.
        pub const ALL: &[Endpoint] = &[ $( $name, )* ];

        /// The endpoint serving `path` (an exact match, like the router).
        pub fn find(path: &str) -> Option<&'static Endpoint> {
            match path {
                $( $path => Some(&ALL[$slot]), )*
                _ => None,
            }
        }
    };
    (@methods) => { Methods::Any };
    (@methods [$($m:literal),+] $allow:literal) => {
        Methods::Only { allowed: &[$($m),+], allow_header: $allow }
    };
    (@passive passive) => { true };
    (@passive) => { false };
}

table! {
    /// `GET /healthz`: liveness.
    HEALTHZ = 0: "/healthz", Other, None, "healthz", passive;
    /// `GET /readyz`: readiness.
    READYZ = 1: "/readyz", Other, None, "readyz", passive;
    /// `POST /v1/acquire`.
    ACQUIRE = 2: "/v1/acquire", Acquire, Any, "acquire";
    /// `POST /v1/keepalive`.
    KEEPALIVE = 3: "/v1/keepalive", Lock, Any, "keepalive";
    /// `POST /v1/release`.
    RELEASE = 4: "/v1/release", Lock, Any, "release";
    /// `POST /v1/get` (public reads need only read permission).
    GET = 5: "/v1/get", Lock, Any, "get";
    /// `POST /v1/update`.
    UPDATE = 6: "/v1/update", Lock, Write, "update";
    /// `POST /v1/remove`.
    REMOVE = 7: "/v1/remove", Lock, Write, "remove";
    /// `GET /v1/describe`.
    DESCRIBE = 8: "/v1/describe", Other, Read, "describe";
    /// `POST /v1/metadata`.
    METADATA = 9: "/v1/metadata", Lock, Write, "update.metadata";
    /// `POST /v1/queue/enqueue`.
    QUEUE_ENQUEUE = 10: "/v1/queue/enqueue", Producer, Write, "queue.enqueue";
    /// `POST /v1/queue/dequeue`.
    QUEUE_DEQUEUE = 11: "/v1/queue/dequeue", Consumer, Read, "queue.dequeue";
    /// `POST /v1/queue/dequeueWithState`.
    QUEUE_DEQUEUE_WITH_STATE = 12: "/v1/queue/dequeueWithState", Consumer, Read, "queue.dequeue.with.state";
    /// `POST /v1/queue/subscribe`.
    QUEUE_SUBSCRIBE = 13: "/v1/queue/subscribe", Consumer, Read, "queue.subscribe";
    /// `POST /v1/queue/subscribeWithState`.
    QUEUE_SUBSCRIBE_WITH_STATE = 14: "/v1/queue/subscribeWithState", Consumer, Read, "queue.subscribe.with.state";
    /// `POST /v1/queue/ack`.
    QUEUE_ACK = 15: "/v1/queue/ack", Ack, Read, "queue.ack";
    /// `POST /v1/queue/nack`.
    QUEUE_NACK = 16: "/v1/queue/nack", Ack, Read, "queue.nack";
    /// `POST /v1/queue/extend`.
    QUEUE_EXTEND = 17: "/v1/queue/extend", Ack, Read, "queue.extend";
    /// `POST /v1/queue/stats` (ours).
    QUEUE_STATS = 18: "/v1/queue/stats", Other, Read, "queue.stats";
    /// `POST /v1/queue/watch`: server-sent events.
    QUEUE_WATCH = 19: "/v1/queue/watch", Other, Read, "queue.watch";
    /// `POST /v1/queue/dlq/list` (ours).
    QUEUE_DLQ_LIST = 20: "/v1/queue/dlq/list", Other, Read, "queue.dlq.list";
    /// `POST /v1/queue/dlq/get` (ours).
    QUEUE_DLQ_GET = 21: "/v1/queue/dlq/get", Other, Read, "queue.dlq.get";
    /// `POST /v1/queue/dlq/redrive` (ours).
    QUEUE_DLQ_REDRIVE = 22: "/v1/queue/dlq/redrive", Other, Write, "queue.dlq.redrive";
    /// `GET` (list), `POST` (upload), `DELETE` (delete all)
    /// `/v1/attachments`. Uploads and deletions need write permission,
    /// public lists read permission.
    ATTACHMENTS = 23: "/v1/attachments", Lock, Any, "attachments" ["GET", "POST", "DELETE"] allow_header: false;
    /// `GET` (download), `DELETE` (delete one) `/v1/attachment`.
    ATTACHMENT = 24: "/v1/attachment", Lock, Any, "attachment" ["GET", "DELETE"] allow_header: false;
    /// `GET` (read), `POST` (update) `/v1/namespace`: a namespace's query
    /// engine preferences; `PUT` is an alias of `POST` (liblockdc sends
    /// it). Both need read and write permission (`rw`), even for reading.
    NAMESPACE = 25: "/v1/namespace", Other, Write, "namespace" ["GET", "POST", "PUT"] allow_header: true;
    /// `POST /v1/query`: keys or documents matching a selector.
    QUERY = 26: "/v1/query", Lock, Read, "query";
    /// `POST /v1/index/flush`: bring a namespace's index up to date (read
    /// and write permission).
    INDEX_FLUSH = 27: "/v1/index/flush", Other, Write, "index.flush" ["POST"] allow_header: true;
    /// `POST /v1/mutate`: edit the holder's view of a document with LQL
    /// mutations; staged like `/v1/update`.
    MUTATE = 28: "/v1/mutate", Lock, Write, "mutate";
    /// `POST /v1/txn/decide`: record a transaction's decision (and apply
    /// it). Read and write permission on every participant namespace, or
    /// on `ALL` without participants.
    TXN_DECIDE = 29: "/v1/txn/decide", Lock, Write, "txn.decide";
    /// `POST /v1/txn/commit`: apply a commit (resource-manager call).
    TXN_COMMIT = 30: "/v1/txn/commit", Lock, Write, "txn.commit";
    /// `POST /v1/txn/rollback`: apply a rollback (resource-manager call).
    TXN_ROLLBACK = 31: "/v1/txn/rollback", Lock, Write, "txn.rollback";
    /// `POST /v1/txn/replay`: re-apply a recorded decision (`ALL` claim).
    TXN_REPLAY = 32: "/v1/txn/replay", Lock, Write, "txn.replay";
    /// `POST /v1/tc/lease/acquire`: coordinator leader election (not in a
    /// single cluster: `503 tc_unavailable`).
    TC_LEASE_ACQUIRE = 33: "/v1/tc/lease/acquire", Other, Any, "tc.lease.acquire";
    /// `POST /v1/tc/lease/renew` (`503 tc_unavailable` here).
    TC_LEASE_RENEW = 34: "/v1/tc/lease/renew", Other, Any, "tc.lease.renew";
    /// `POST /v1/tc/lease/release` (`503 tc_unavailable` here).
    TC_LEASE_RELEASE = 35: "/v1/tc/lease/release", Other, Any, "tc.lease.release";
    /// `GET /v1/tc/leader` (`503 tc_unavailable` here).
    TC_LEADER = 36: "/v1/tc/leader", Other, Any, "tc.leader";
    /// `POST /v1/tc/cluster/announce` (peer servers only).
    TC_CLUSTER_ANNOUNCE = 37: "/v1/tc/cluster/announce", Other, Any, "tc.cluster.announce";
    /// `POST /v1/tc/cluster/leave` (peer servers only).
    TC_CLUSTER_LEAVE = 38: "/v1/tc/cluster/leave", Other, Any, "tc.cluster.leave";
    /// `GET /v1/tc/cluster/list`: coordinator endpoints (none here).
    TC_CLUSTER_LIST = 39: "/v1/tc/cluster/list", Other, Any, "tc.cluster.list";
    /// `POST /v1/tc/rm/register` (peer servers only).
    TC_RM_REGISTER = 40: "/v1/tc/rm/register", Other, Any, "tc.rm.register";
    /// `POST /v1/tc/rm/unregister` (peer servers only).
    TC_RM_UNREGISTER = 41: "/v1/tc/rm/unregister", Other, Any, "tc.rm.unregister";
    /// `GET /v1/tc/rm/list`: resource managers by backend (none here).
    TC_RM_LIST = 42: "/v1/tc/rm/list", Other, Any, "tc.rm.list";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_paths_and_lookup_agree() {
        let mut paths = std::collections::HashSet::new();
        for (i, ep) in ALL.iter().enumerate() {
            assert_eq!(ep.slot, i, "{}", ep.path);
            assert!(paths.insert(ep.path), "duplicate path {}", ep.path);
            assert_eq!(find(ep.path), Some(ep));
            assert!(ep.sys.starts_with(SYS_PREFIX), "{}", ep.sys);
            assert!(!ep.operation().is_empty());
        }
        assert_eq!(find("/v1/acquire/"), None);
        assert_eq!(find("/V1/acquire"), None);
        assert_eq!(ACQUIRE.operation(), "acquire");
        assert_eq!(METADATA.operation(), "update.metadata");
    }

    #[test]
    fn only_health_checks_skip_authorization_and_passive_refusal() {
        for ep in ALL {
            let health = ep.path == "/healthz" || ep.path == "/readyz";
            assert_eq!(ep.permission == Permission::None, health, "{}", ep.path);
            assert_eq!(ep.on_passive, health, "{}", ep.path);
        }
    }

    #[test]
    fn methods_only_lists_what_it_serves() {
        let m = Methods::Only {
            allowed: &["GET", "POST"],
            allow_header: true,
        };
        assert!(m.allows("GET") && m.allows("POST"));
        assert!(!m.allows("PUT") && !m.allows("get"));
        assert!(Methods::Any.allows("PATCH"));
        assert!(ATTACHMENTS.methods.allows("DELETE") && !ATTACHMENTS.methods.allows("PUT"));
        assert!(ATTACHMENT.methods.allows("GET") && !ATTACHMENT.methods.allows("POST"));
        assert_eq!(ACQUIRE.methods, Methods::Any);
        assert!(NAMESPACE.methods.allows("PUT") && !NAMESPACE.methods.allows("DELETE"));
    }
}
