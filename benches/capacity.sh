#!/usr/bin/env bash
# The capacity benchmark: a release server with its defaults and hasses-bench on this host.
#   benches/capacity.sh [N] [extra hasses-bench options...]
# Figures go to stdout (a table) and to target/capacity.jsonl (one JSON line per scenario).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-18000}
shift || true
cargo build --release --quiet --bin hasses --bin hasses-bench
sse_port=${SSE_PORT:-18080}
control_port=${CONTROL_PORT:-18085}
./target/release/hasses --port "$sse_port" --control-port "$control_port" --log-level 0 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
sleep 0.5
rm -f target/capacity.jsonl
./target/release/hasses-bench all -n "$n" --src-addrs 127.0.0.1-127.0.0.8 \
    --sse "127.0.0.1:$sse_port" --control "127.0.0.1:$control_port" \
    --server-pid "$server" --json-out target/capacity.jsonl -q "$@"
