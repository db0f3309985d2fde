#!/usr/bin/env bash
# Idle memory over HTTP/2 against HTTP/1.1 over TLS, and what each further stream costs: two rounds
# of `hasses-bench idle`, one fresh release server each (docs/performance.md, "HTTP/2").
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/certificate.sh
source benches/certificate.sh
cargo build --release --quiet --package hasses --package hasses-bench
ulimit -n 20000
n=18000; s=10
certificate target/http2-key.pem target/http2-cert.pem
measure() {
    local name=$1 connections=$2; shift 2
    ./target/release/hasses --port 18080 --control-port 18085 --no-api --tls-cert target/http2-cert.pem --tls-key target/http2-key.pem >"target/h2idle-server-$name.log" 2>&1 &
    server=$!
    sleep 0.5
    rm -f "target/h2idle-$name.jsonl"
    ./target/release/hasses-bench idle -n "$connections" --src-addrs 127.0.0.1-127.0.0.8 --sse 127.0.0.1:18080 --control 127.0.0.1:18085 --server-pid "$server" --json-out "target/h2idle-$name.jsonl" -q --tls --ca target/http2-cert.pem "$@" >/dev/null 2>&1
    kill -TERM "$server"; wait "$server" 2>/dev/null
    jq -r 'select(.scenario == "idle") | .rss_bytes_per_connection' "target/h2idle-$name.jsonl"
}
for round in 1 2; do
    h1=$(measure h1 $n)
    h2=$(measure h2x1 $n --http2)
    hs=$(measure h2xS $((n / s)) --http2 --streams-per-connection $s)
    hf=$(measure h2x1few $((n / s)) --http2)
    awk -v r=$round -v h1="$h1" -v h2="$h2" -v hs="$hs" -v hf="$hf" -v s=$s 'BEGIN { printf "round %d: h1 TLS %.0f B, h2x1 %.0f B (%.2fx), h2 1800x10 %.0f B per conn, 1800x1 %.0f B: per further stream %.0f B\n", r, h1, h2, h2/h1, hs, hf, (hs-hf)/(s-1) }'
done
