#!/usr/bin/env bash
# How fast one cluster node's tail reads the stream, on this host:
#   benches/tail.sh [ENTRIES] [HASSES_BINARY]        (ENTRIES: 500000; the binary: this tree's release)
# A release node (--cluster, 2 workers) with one client (curl) subscribed to `user1` is stopped
# (SIGSTOP); redis-benchmark appends ENTRIES entries of the shape a node writes (a targeted
# publish of 64 B to `user1`) to the stream, pipelined; the node is let go on (SIGCONT) and its
# tail reads them all back and delivers them, with nothing else running. Reported: the wall
# time from SIGCONT until the client's worker counted every delivery (tcpstatus' msgsendcnt,
# polled every 20 ms), entries per second over it, and each thread's CPU seconds meanwhile
# (the tail is hasses-cluster-tail: its CPU per entry is what one tail costs an entry).
# Logs go to target/tail-*.log. Ports: BASE_PORT (18280) for SSE, + 10 control, + 20 Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
entries=${1:-500000}
binary=${2:-}
base=${BASE_PORT:-18280}
for tool in redis-server redis-benchmark redis-cli curl jq; do
    command -v "$tool" >/dev/null || { echo "tail.sh: needs $tool" >&2; exit 2; }
done
if [[ -z $binary ]]; then
    cargo build --release --quiet --package hasses
    binary=./target/release/hasses
fi
redis_port=$((base + 20))
running=()
redis_dir=$(mktemp -d target/tail-redis.XXXXXX)
cleanup() {
    local pid
    for pid in "${running[@]}"; do
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$redis_dir"
}
trap cleanup EXIT
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() {
    local tries
    for ((tries = 0; tries < 200; tries++)); do
        listening "$1" && return 0
        sleep 0.05
    done
    echo "tail.sh: nothing listens on $1 after 10 s" >&2
    exit 1
}
for port in "$base" $((base + 10)) "$redis_port"; do
    listening "$port" && { echo "tail.sh: port $port is in use: set BASE_PORT" >&2; exit 2; }
done

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" \
    >target/tail-redis.log 2>&1 &
running+=($!)
wait_listening "$redis_port"
# Room in the history for every entry (about 100 B each), as capacity.sh sizes it.
"$binary" --port "$base" --control-port $((base + 10)) --no-api --workers 2 \
    --history-memory $((entries * 128 > 64 << 20 ? entries * 128 : 64 << 20)) \
    --cluster "redis://127.0.0.1:$redis_port" >target/tail-node.log 2>&1 &
node=$!
running+=("$node")
wait_listening "$base"
wait_listening $((base + 10))
curl -sN "http://127.0.0.1:$base/sse?subscribe=user1" >/dev/null &
running+=($!)
# A figure from a control command's one line of JSON ($1: the command, $2: the key).
ask() {
    local line=
    exec 3<>"/dev/tcp/127.0.0.1/$((base + 10))"
    echo "$1" >&3
    read -r -t 2 line <&3 || true
    exec 3<&-
    [[ -n $line ]] || line='{}'
    jq -r ".$2 // 0" <<<"$line"
}
sent() { ask tcpstatus msgsendcnt; }
# The client is subscribed (else it would miss what is delivered before its handshake).
for ((tries = 0; tries < 100; tries++)); do
    [[ $(ask tcpsubscribedclients:user1 subscribedclients) -ge 1 ]] && break
    sleep 0.05
done
kill -STOP "$node"
data=$(head -c 48 /dev/zero | tr '\0' 'x')
redis-benchmark -p "$redis_port" -c 1 -P 100 -n "$entries" -q \
    XADD hasses:events '*' n bench s 1 t =5:user1 d "$data" >/dev/null
echo "stream: $(redis-cli -p "$redis_port" XLEN hasses:events) entries; the node goes on"
threads() {
    local t
    for t in /proc/"$node"/task/*; do
        echo "$(cat "$t/comm")/${t##*/} $(cut -d' ' -f1 "$t/schedstat")"
    done
}
before=$(threads)
start=$(date +%s.%N)
kill -CONT "$node"
for ((tries = 0; tries < 3000; tries++)); do
    [[ $(sent) -ge $entries ]] && break
    sleep 0.02
done
end=$(date +%s.%N)
after=$(threads)
got=$(sent)
echo "delivered $got of $entries in $(echo "$end - $start" | bc -l | cut -c1-6) s:" \
    "$(echo "$got / ($end - $start)" | bc -l | cut -d. -f1) entries/s"
echo "CPU s by thread meanwhile:"
join <(sort <<<"$before") <(sort <<<"$after") | awk -v n="$got" \
    '{ d = ($3 - $2) / 1e9; if (d > 0.001) printf "  %-20s %.3f s  %.2f us/entry\n", $1, d, d * 1e6 / n }'
[[ $got -ge $entries ]]
