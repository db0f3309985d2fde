#!/usr/bin/env bash
# A cluster against a single node, on this host, in one run:
#   benches/cluster.sh [N_PER_NODE] [extra hasses-bench options...]   (N_PER_NODE: 6000)
# (a) one release hasses node with 3 x N_PER_NODE clients; (b) three nodes over one Redis
# (--cluster) with N_PER_NODE clients each, connection i on node i mod 3, every message
# published on node 1's control port, so that two thirds of the deliveries cross Redis. Both
# get the same two runs of hasses-bench: `all` (connect, idle, broadcast, burst, targeted),
# then `targeted --rate 1000 --targeted 10000`: publish-to-delivery latency at 1,000 targeted
# publishes a second. Extra options go to both runs (not --rate or --targeted).
# The issue's targets, read from the summary at the end: the cluster's server CPU per delivery
# within 1.1x the single node's, and its publish-to-last-delivery p50 and p99 at that rate
# within 2 ms of the single node's.
# Server CPU of the cluster: the sum over the three nodes AND redis-server, the whole price of
# the cluster on this box. The line under each phase ("server CPU s by process", redis-server
# last) splits it, and the summary shows the nodes' share alone beside it.
# Each node gets --history-memory sized as capacity.sh sizes it (every node holds every event)
# and --no-api (three nodes cannot share the API's default port; the API is not measured).
# Between the two, `hasses-bench stream-hop` measures the hop alone (XADD to XREAD BLOCK through
# the same Redis, no node running): the floor of what the cluster adds to latency.
# Figures go to stdout and to target/cluster.jsonl (one JSON line per phase; the cluster's carry
# "sse_addresses": 3); the servers log to target/cluster-*.log. Ports: BASE_PORT (18180) + 0
# for the single node, + 1..3 for the nodes, their control ports + 10; Redis takes the first
# free port from BASE_PORT + 20.
set -euo pipefail
cd "$(dirname "$0")/.."
per_node=${1:-6000}
shift || true
n=$((3 * per_node))
base=${BASE_PORT:-18180}
command -v redis-server >/dev/null || { echo "cluster.sh: needs redis-server (apt-get install redis-server)" >&2; exit 2; }
cargo build --release --quiet --package hasses --package hasses-bench
# HASSES=path: that server binary instead of this tree's (a before/after comparison).
hasses=${HASSES:-./target/release/hasses}

running=()
redis_dir=
cleanup() {
    local pid
    for pid in "${running[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $redis_dir ]]; then rm -rf "$redis_dir"; fi
}
trap cleanup EXIT

# Whether something listens on this loopback port.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port in use would take some of the connections (hasses listens with SO_REUSEPORT, so an
# old instance on the port shares it silently), or refuse the start.
need_free() {
    local port
    for port; do
        if listening "$port"; then
            echo "cluster.sh: port $port is in use: stop what listens there, or set BASE_PORT" >&2
            exit 2
        fi
    done
}

# Waits, at most 10 s, until process $1 listens on the ports after it; fails if it died.
wait_listening() {
    local pid=$1 port tries
    shift
    for port; do
        for ((tries = 0; tries < 200; tries++)); do
            listening "$port" && break
            kill -0 "$pid" 2>/dev/null || { echo "cluster.sh: process $pid died before listening on $port" >&2; exit 1; }
            sleep 0.05
        done
        listening "$port" || { echo "cluster.sh: nothing listens on $port after 10 s" >&2; exit 1; }
    done
}

# Stops the processes given (TERM, then waits), and forgets them.
stop() {
    local pid keep=() r
    for pid; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for r in "${running[@]}"; do
        [[ " $* " == *" $r "* ]] || keep+=("$r")
    done
    running=("${keep[@]}")
}

# Room for N x 101 events of about 100 B, as capacity.sh gives its server.
history_memory=$((n * 101 * 128 > 64 << 20 ? n * 101 * 128 : 64 << 20))

# Starts hasses node $1 (0: the single node; 1..3: the cluster's) with the extra flags after
# it; its pid is in $node_pid.
start_node() {
    local i=$1
    shift
    need_free $((base + i)) $((base + 10 + i))
    "$hasses" --port $((base + i)) --control-port $((base + 10 + i)) --no-api \
        --history-memory "$history_memory" "$@" >"target/cluster-node$i.log" 2>&1 &
    node_pid=$!
    running+=("$node_pid")
    wait_listening "$node_pid" $((base + i)) $((base + 10 + i))
}

status=0
rm -f target/cluster.jsonl
# Both runs over the same clients count (3 x N_PER_NODE), sources and flags; a failure (loss,
# a timeout) is remembered and the rest still runs.
bench() {
    local sse=$1 control=$2 pids=$3 common
    shift 3
    common=(-n "$n" --src-addrs 127.0.0.1-127.0.0.8 --sse "$sse" --control "$control"
        --server-pid "$pids" --json-out target/cluster.jsonl -q "$@")
    ./target/release/hasses-bench all "${common[@]}" || status=1
    ./target/release/hasses-bench targeted --rate 1000 --targeted 10000 "${common[@]}" || status=1
}

echo "== (a) one node, $n clients"
start_node 0
single=$node_pid
bench "127.0.0.1:$base" "127.0.0.1:$((base + 10))" "$single" "$@"
stop "$single"

# Redis of this run's own: no snapshots nor append-only file (nothing to keep), in a
# directory under target/ removed at exit.
redis_port=$((base + 20))
while listening "$redis_port"; do redis_port=$((redis_port + 1)); done
redis_dir=$(mktemp -d target/cluster-redis.XXXXXX)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$redis_dir" >target/cluster-redis.log 2>&1 &
redis=$!
running+=("$redis")
wait_listening "$redis" "$redis_port"

# The floor of the hop every cluster publish takes: XADD, then XREAD BLOCK on another
# connection, at the paced run's rate, with no node running.
echo "== the hop through Redis alone"
./target/release/hasses-bench stream-hop --redis "redis://127.0.0.1:$redis_port" --rate 1000 \
    --targeted 10000 --json-out target/cluster.jsonl || status=1

echo "== (b) three nodes over Redis (127.0.0.1:$redis_port), $per_node clients each"
nodes=()
for i in 1 2 3; do
    start_node "$i" --cluster "redis://127.0.0.1:$redis_port"
    nodes+=("$node_pid")
done
sse="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
pids="${nodes[0]},${nodes[1]},${nodes[2]},$redis"
echo "server pids: nodes ${nodes[*]}, redis-server $redis (the last in each 'by process' line)"
bench "$sse" "127.0.0.1:$((base + 11))" "$pids" "$@"
stop "${nodes[@]}" "$redis"

# The issue's comparisons, from the JSON lines (needs jq).
if command -v jq >/dev/null; then
    echo "== cluster against one node"
    jq -rs '
        def per_unit: .server_cpu_us_per_delivery // .server_cpu_us_per_message;
        def nodes_per_unit: if .server_cpu_s_each and .server_cpu_s > 0
            then per_unit * ((.server_cpu_s_each[0:3] | add) / .server_cpu_s) else null end;
        def name: .scenario + (if .rate_per_s then " at \(.rate_per_s)/s" else "" end);
        def f: if . == null then "-" else (. * 100 | round / 100 | tostring) end;
        def x: if . == null then "-" else (. * 100 | round / 100 | tostring) + "x" end;
        map(select(.scenario | IN("broadcast", "burst", "targeted"))) as $lines
        | ($lines | map(select(.sse_addresses == null))) as $one
        | ($lines | map(select(.sse_addresses != null))) as $three
        | $one[] as $a | $three[] | select(name == ($a | name)) as $b
        | ($a | per_unit) as $ua | ($b | per_unit) as $ub | ($b | nodes_per_unit) as $un
        | "\($a | name): server CPU/unit one node \($ua | f) us, cluster \($ub | f) us"
          + " (\(if $ua and $ub then $ub / $ua else null end | x); nodes alone \($un | f) us,"
          + " \(if $ua and $un then $un / $ua else null end | x); target <= 1.1x)"
          + (if $a.last_receiver_ms_p50 then
                "; publish to last delivery p50 \($a.last_receiver_ms_p50 | f) -> \($b.last_receiver_ms_p50 | f) ms,"
                + " p99 \($a.last_receiver_ms_p99 | f) -> \($b.last_receiver_ms_p99 | f) ms"
                + (if $a.rate_per_s then " (target: each within +2 ms)" else "" end)
             else "" end)
    ' target/cluster.jsonl
    jq -r 'select(.scenario == "stream-hop")
        | "the hop through Redis alone at \(.rate_per_s)/s: p50 \(.hop_ms_p50 * 100 | round / 100) ms,"
          + " p99 \(.hop_ms_p99 * 100 | round / 100) ms"' target/cluster.jsonl
else
    echo "(no jq: compare the tables above, or read target/cluster.jsonl)"
fi
exit "$status"
