#!/usr/bin/env bash
# What an open operator console costs the server: lease cycles per second
# of a `lockd` with `--console-listen` and one browser's event stream
# attached, divided by those of the same `lockd` without a console, in
# alternating windows (the order swaps every round).
#
# Two release `lockd` processes on `disk://` temp dirs run side by side
# (the idle one costs next to nothing); `lockd-bench lease-cycle
# --endpoints` drives one at a time. The console side also keeps the
# request and store metrics the console reads; that is part of its cost.
#
# Environment: ROUNDS (default 5), WINDOW per run (8s), WARMUP (1s),
# CLIENTS (32), STORE (disk; or mem).
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
WINDOW=${WINDOW:-8s}
WARMUP=${WARMUP:-1s}
CLIENTS=${CLIENTS:-32}
STORE=${STORE:-disk}

cargo build --release -p lockd -p lockd-bench >&2
LOCKD=$PWD/target/release/lockd
BENCH=$PWD/target/release/lockd-bench

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
store() {
    if [[ $STORE == disk ]]; then mkdir -p "$work/$1" && echo "disk://$work/$1"; else echo "mem://"; fi
}
wait_up() {
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
        sleep 0.1
    done
    echo "lockd on port $1 did not come up" >&2
    exit 1
}

on_port=$(port); off_port=$(port); console_port=$(port)
"$LOCKD" --disable-mtls --listen "127.0.0.1:$on_port" --store "$(store on)" \
    --console-listen "127.0.0.1:$console_port" --log-level warn 2>"$work/on.log" &
pids+=($!)
"$LOCKD" --disable-mtls --listen "127.0.0.1:$off_port" --store "$(store off)" \
    --log-level warn 2>"$work/off.log" &
pids+=($!)
wait_up "$on_port"
wait_up "$off_port"

# One open console: its event stream, read and thrown away.
curl -sN "http://127.0.0.1:$console_port/api/events" >"$work/events" &
pids+=($!)

run() {
    "$BENCH" lease-cycle --endpoints "http://127.0.0.1:$1" -c "$CLIENTS" \
        -d "$WINDOW" -w "$WARMUP" --no-progress --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["lockd"]["ops_per_s"])'
}

echo "lease-cycle, $CLIENTS clients, $STORE://, $ROUNDS rounds of $WINDOW per side (order alternates)"
printf '%-6s %14s %14s %8s\n' round "console on" "console off" ratio
on_all=(); off_all=()
for r in $(seq 1 "$ROUNDS"); do
    if ((r % 2)); then on=$(run "$on_port"); off=$(run "$off_port")
    else off=$(run "$off_port"); on=$(run "$on_port"); fi
    on_all+=("$on"); off_all+=("$off")
    printf '%-6s %14.0f %14.0f %8.3f\n' "$r" "$on" "$off" "$(python3 -c "print($on/$off)")"
done
python3 - "${on_all[*]}" "${off_all[*]}" <<'EOF'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]
off = [float(x) for x in sys.argv[2].split()]
ratios = sorted(a / b for a, b in zip(on, off))
print(f"sum: console on {sum(on):.0f}, off {sum(off):.0f} cycles/s over the rounds; "
      f"on / off = {sum(on) / sum(off):.3f} (median of rounds {statistics.median(ratios):.3f}, "
      f"range {ratios[0]:.3f}-{ratios[-1]:.3f})")
EOF
events=$(grep -c '^event: overview' "$work/events" || true)
echo "the console's stream carried $events overview events meanwhile"
