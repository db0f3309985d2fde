#!/usr/bin/env bash
# HTTP/2 against HTTP/1.1 over TLS (issue 24), in one run: `hasses-bench all` three times and
# `idle` once, each against a fresh release server (idle memory is read from the server's
# start), on one certificate.
#   benches/http2.sh [N] [S] [extra hasses-bench options...]   N = 18000, S = 10 by default
#     1. HTTP/1.1 over TLS, N connections                 (the reference)
#     2. HTTP/2 over TLS, N connections x 1 stream
#     3. HTTP/2 over TLS, N/S connections x S streams      (as many subscribers as 1 and 2)
#     4. HTTP/2 over TLS, N/S connections x 1 stream, idle only (3's connections without the
#        further streams)
#   PLAIN=1 benches/http2.sh ...   the same without TLS: HTTP/1.1 against h2c (prior knowledge)
#   HASSES=path benches/http2.sh ...   that server binary instead of this tree's
# Then the issue's ratios, each against run 1:
#   - server CPU per delivery (broadcast, burst) and per targeted message, runs 2 and 3 (<= 1.1)
#   - memory per idle connection, run 2 (<= 1.25)
#   - each further stream: (run 3's bytes per connection - run 4's) / (S - 1) (<= 300 B)
#   - a connection of S streams against S connections, memory and connect CPU (< 1)
# Figures go to target/http2-{h1,h2x1,h2xS,h2x1-few}.jsonl (one JSON line per phase) and the ratios to
# stdout; each server logs to target/http2-server-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/certificate.sh
source benches/certificate.sh
n=${1:-18000}
s=${2:-10}
shift 2 || shift $# || true
if ((s < 2 || n % s != 0)); then
    echo "http2.sh: S must be at least 2 and divide N ($n / $s)" >&2
    exit 2
fi
cargo build --release --quiet --package hasses --package hasses-bench
hasses=${HASSES:-./target/release/hasses}
sse_port=${SSE_PORT:-18080}
control_port=${CONTROL_PORT:-18085}
server_tls=()
bench_tls=()
if [[ ${PLAIN:-} != 1 ]]; then
    # ECDSA P-256 for 127.0.0.1, CA:FALSE: rustls refuses a CA certificate as the server's own.
    certificate target/http2-key.pem target/http2-cert.pem
    server_tls=(--tls-cert target/http2-cert.pem --tls-key target/http2-key.pem)
    bench_tls=(--tls --ca target/http2-cert.pem)
fi
server=
trap '[[ -n $server ]] && kill -TERM $server 2>/dev/null; wait 2>/dev/null || true' EXIT

# measure NAME SCENARIO CONNECTIONS [hasses-bench options...]: against a fresh server.
measure() {
    local name=$1 scenario=$2 connections=$3
    shift 3
    "$hasses" --port "$sse_port" --control-port "$control_port" --no-api "${server_tls[@]}" \
        >"target/http2-server-$name.log" 2>&1 &
    server=$!
    sleep 0.5
    rm -f "target/http2-$name.jsonl"
    echo "== $name: $connections connections $*"
    ./target/release/hasses-bench "$scenario" -n "$connections" --src-addrs 127.0.0.1-127.0.0.8 \
        --sse "127.0.0.1:$sse_port" --control "127.0.0.1:$control_port" --server-pid "$server" \
        --json-out "target/http2-$name.jsonl" -q "${bench_tls[@]}" "$@" || status=1
    kill -TERM "$server"
    wait "$server" || true
    server=
}

status=0
measure h1 all "$n" "$@"
measure h2x1 all "$n" --http2 "$@"
measure h2xS all "$((n / s))" --http2 --streams-per-connection "$s" "$@"
measure h2x1-few idle "$((n / s))" --http2 "$@"

# figure RUN PHASE FIELD: one figure of one run's phase.
figure() {
    jq -r --arg phase "$2" "select(.scenario == \$phase) | .$3 // \"nan\"" "target/http2-$1.jsonl"
}

# ratio LABEL A B TARGET: prints A / B against the target.
ratio() {
    awk -v label="$1" -v a="$2" -v b="$3" -v target="$4" 'BEGIN {
        r = (b + 0 > 0) ? a / b : "nan"
        printf "%-62s %10.2f / %10.2f = %5.2fx  (target %s)\n", label, a, b, r, target
    }'
}

over=${PLAIN:+h1 plain}
over=${over:-h1 over TLS}
echo
echo "HTTP/2 against HTTP/1.1 (${PLAIN:+h2c, }N = $n subscribers, S = $s)"
for phase in broadcast burst; do
    h1=$(figure h1 "$phase" server_cpu_us_per_delivery)
    ratio "server CPU us per delivery, $phase, h2 $n x 1 / $over" "$(figure h2x1 "$phase" server_cpu_us_per_delivery)" "$h1" "<= 1.1"
    ratio "server CPU us per delivery, $phase, h2 $((n / s)) x $s / $over" "$(figure h2xS "$phase" server_cpu_us_per_delivery)" "$h1" "<= 1.1"
done
h1=$(figure h1 targeted server_cpu_us_per_message)
ratio "server CPU us per targeted message, h2 $n x 1 / $over" "$(figure h2x1 targeted server_cpu_us_per_message)" "$h1" "<= 1.1"
ratio "server CPU us per targeted message, h2 $((n / s)) x $s / $over" "$(figure h2xS targeted server_cpu_us_per_message)" "$h1" "<= 1.1"
mem_h1=$(figure h1 idle rss_bytes_per_connection)
mem_1=$(figure h2x1 idle rss_bytes_per_connection)
mem_s=$(figure h2xS idle rss_bytes_per_connection)
mem_few=$(figure h2x1-few idle rss_bytes_per_connection)
ratio "idle memory B per connection, h2 $n x 1 / $over" "$mem_1" "$mem_h1" "<= 1.25"
awk -v a="$mem_s" -v b="$mem_few" -v s="$s" -v c="$((n / s))" 'BEGIN {
    printf "%-62s %10.0f B  (target <= 300 B)\n", "idle memory per further stream, (" c " x " s " - " c " x 1) / " s - 1, (a - b) / (s - 1)
}'
ratio "idle memory B, a connection of $s streams / $s x $over" "$mem_s" "$(awk -v a="$mem_h1" -v s="$s" 'BEGIN { print a * s }')" "< 1"
cpu_h1=$(figure h1 connect server_cpu_us_per_connection)
ratio "connect server CPU us, a connection of $s streams / $s x $over" "$(figure h2xS connect server_cpu_us_per_connection)" "$(awk -v a="$cpu_h1" -v s="$s" 'BEGIN { print a * s }')" "< 1"
exit "$status"
