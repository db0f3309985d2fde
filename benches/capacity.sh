#!/usr/bin/env bash
# The capacity benchmark: a release server with its defaults and hasses-bench on this host.
#   benches/capacity.sh [N] [extra hasses-bench options...]
#   TLS=1 benches/capacity.sh [N] ...   the same over TLS, with a fresh self-signed certificate
#   SERVER=floor benches/capacity.sh [N] ...   the same against `hasses-bench floor-server`, the
#                                  least an epoll server does: what the kernel alone costs here
#   SERVER_FLAGS="--history 0" benches/capacity.sh [N] ...   the server with these flags added
#                                  to its defaults (split on spaces), e.g. to compare history off
# Against hasses, `hasses-bench resume` follows `all` (not with --history 0: nothing to resume
# from; the floor server keeps no history). The server's --history-memory is sized to hold that
# scenario's N x 101 events (about 100 B each), the only flag it gets beyond its defaults.
# Figures go to stdout (a table) and to target/capacity.jsonl (one JSON line per scenario);
# the server logs at its default level (a line per connection) to target/capacity-server.log.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/certificate.sh
source benches/certificate.sh
n=${1:-18000}
shift || true
cargo build --release --quiet --package hasses --package hasses-bench
# HASSES=path: that server binary instead of this tree's (a before/after comparison).
hasses=${HASSES:-./target/release/hasses}
sse_port=${SSE_PORT:-18080}
control_port=${CONTROL_PORT:-18085}
server_tls=()
bench_tls=()
read -r -a server_flags <<<"${SERVER_FLAGS:-}"
if [[ ${TLS:-} == 1 ]]; then
    # An ECDSA P-256 certificate for 127.0.0.1, CA:FALSE (rustls refuses a CA certificate as
    # the server's own); hasses-bench trusts it with --ca.
    certificate target/capacity-key.pem target/capacity-cert.pem
    server_tls=(--tls-cert target/capacity-cert.pem --tls-key target/capacity-key.pem)
    bench_tls=(--tls --ca target/capacity-cert.pem)
fi
if [[ ${SERVER:-hasses} == floor ]]; then
    [[ ${TLS:-} == 1 ]] && { echo "capacity.sh: the floor server speaks no TLS" >&2; exit 2; }
    [[ -n ${SERVER_FLAGS:-} ]] && { echo "capacity.sh: SERVER_FLAGS are hasses' flags" >&2; exit 2; }
    ./target/release/hasses-bench floor-server --sse "[::]:$sse_port" \
        --control "127.0.0.1:$control_port" >target/capacity-server.log 2>&1 &
else
    history_memory=$((n * 101 * 128 > 64 << 20 ? n * 101 * 128 : 64 << 20))
    "$hasses" --port "$sse_port" --control-port "$control_port" "${server_tls[@]}" \
        --history-memory "$history_memory" "${server_flags[@]}" >target/capacity-server.log 2>&1 &
fi
server=$!
# The floor server dies of the TERM (status 143): not the benchmark's failure.
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
sleep 0.5
rm -f target/capacity.jsonl
bench=(-n "$n" --src-addrs 127.0.0.1-127.0.0.8 --sse "127.0.0.1:$sse_port"
    --control "127.0.0.1:$control_port" --server-pid "$server" --json-out target/capacity.jsonl -q
    "${bench_tls[@]}" "$@")
./target/release/hasses-bench all "${bench[@]}"
if [[ ${SERVER:-hasses} != floor && " ${SERVER_FLAGS:-} " != *" --history 0 "* ]]; then
    ./target/release/hasses-bench resume "${bench[@]}"
fi
