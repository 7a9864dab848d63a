#!/usr/bin/env bash
# lockd vs etcd, lease cycles at 32 clients, for mem:// and disk:// lockd.
#
# Installs etcd-server and protobuf-compiler (Debian) when missing, builds
# lockd-bench with `--features etcd`, starts a single etcd with its data dir
# under target/etcd and points lockd's disk:// temp dir at target/tmp
# (TMPDIR), so both persist to the same disk; runs `lease-cycle --vs-etcd`
# (alternating windows), then a sweep with a chart, and stops etcd.
#
# Environment: DURATION (default 15s per system), CLIENTS (32),
# SWEEP (1,4,16,64; empty = no sweep), ETCD_PORT (2379), OUT (bench/).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-15s}
CLIENTS=${CLIENTS:-32}
SWEEP=${SWEEP-1,4,16,64}
ETCD_PORT=${ETCD_PORT:-2379}
OUT=${OUT:-$ROOT/bench}
ETCD_URL=http://127.0.0.1:$ETCD_PORT

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if ((${#need[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get update
    $SUDO apt-get install -y "${need[@]}"
fi

cargo build --release -p lockd-bench --features etcd
BENCH=$ROOT/target/release/lockd-bench

# etcd and lockd's disk:// directory on the same disk (under target/).
export TMPDIR=$ROOT/target/tmp
mkdir -p "$TMPDIR"
DATA=$ROOT/target/etcd
rm -rf "$DATA"
etcd --name bench --data-dir "$DATA" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:$((ETCD_PORT + 1)) \
    --initial-advertise-peer-urls http://127.0.0.1:$((ETCD_PORT + 1)) \
    --initial-cluster bench=http://127.0.0.1:$((ETCD_PORT + 1)) \
    >"$ROOT/target/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill "$ETCD_PID" 2>/dev/null; wait "$ETCD_PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT

for _ in $(seq 1 50); do
    if curl -fsS "$ETCD_URL/health" >/dev/null 2>&1; then break; fi
    sleep 0.2
done
curl -fsS "$ETCD_URL/health" >/dev/null || { echo "etcd did not start; see target/etcd.log" >&2; exit 1; }
echo "etcd $(etcd --version | head -1) on $ETCD_URL, data in $DATA"

for store in mem disk; do
    echo "== lease-cycle, $store://, $CLIENTS clients, vs etcd =="
    "$BENCH" lease-cycle --store "$store" -c "$CLIENTS" --duration "$DURATION" --warmup 1s \
        --vs-etcd "$ETCD_URL" --rounds 3 --no-progress \
        --json >"$OUT/vs-etcd-$store.json"
    if [[ -n $SWEEP ]]; then
        echo "== sweep $SWEEP, $store:// =="
        "$BENCH" lease-cycle --store "$store" --sweep "$SWEEP" --duration "$DURATION" --warmup 1s \
            --vs-etcd "$ETCD_URL" --rounds 3 --no-progress \
            --chart "$OUT/lease-cycle-vs-etcd-$store.svg" --json >"$OUT/sweep-$store.json"
    fi
done
