#!/usr/bin/env bash
# What one publish costs the server in instructions, a control line (`nobody=DATA` on the
# control port) beside an HTTP publish (`POST /publish`, a form body, keep-alive, pipelined),
# counted by callgrind: deterministic, where CPU time on a shared 2-core machine moved by 2x.
#   benches/publish-instructions.sh [N1] [N2]     (defaults 10000 and 30000)
# Each way, the release server runs under `valgrind --tool=callgrind` twice, sent N1 then N2
# publishes by `hasses-bench publish-http --via line|http`, and is stopped with SIGTERM; the
# figure is the difference of the two runs' instructions over N2 - N1, so that starting and
# stopping cancel out. Printed for the control thread (which reads, parses, sequences and
# answers every publish) and for the whole process (the workers get the same events either
# way). Needs valgrind (Debian package valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
n1=${1:-10000}
n2=${2:-30000}
((n2 > n1)) || { echo "publish-instructions.sh: N2 must be above N1" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "publish-instructions.sh: needs valgrind" >&2; exit 2; }
cargo build --release --quiet --package hasses --package hasses-bench
# HASSES=path: that server binary instead of this tree's (a before/after comparison).
hasses=${HASSES:-./target/release/hasses}
control_port=${CONTROL_PORT:-18185}
api_port=${API_PORT:-18186}
dir=$(mktemp -d)
server=
trap '[[ -n $server ]] && kill -TERM "$server" 2>/dev/null; rm -rf "$dir"' EXIT

# Whether something listens on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The instructions of one run (VIA N), as "CONTROL_THREAD WHOLE_PROCESS".
instructions() {
    local out="$dir/$1-$2"
    if listening "$control_port" || listening "$api_port"; then
        echo "publish-instructions.sh: port $control_port or $api_port is taken (CONTROL_PORT, API_PORT)" >&2
        exit 2
    fi
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out" \
        "$hasses" --port 0 --control-port "$control_port" --api-bind "127.0.0.1:$api_port" \
        >"$out.log" 2>&1 &
    server=$!
    for _ in $(seq 600); do
        listening "$control_port" && listening "$api_port" && break
        sleep 0.1
    done
    kill -0 "$server" 2>/dev/null || { echo "publish-instructions.sh: the server did not start:" >&2; cat "$out.log" >&2; exit 1; }
    ./target/release/hasses-bench publish-http --via "$1" --publishes "$2" --server-pid "$server" \
        --control "127.0.0.1:$control_port" --api "127.0.0.1:$api_port" >/dev/null
    kill -TERM "$server"
    wait "$server" || { echo "publish-instructions.sh: the server failed, see its log:" >&2; cat "$out.log" >&2; exit 1; }
    server=
    local control whole=0 count
    for file in "$out"-*; do
        count=$(awk '/^summary:/ {print $2}' "$file")
        whole=$((whole + count))
        # The control thread's file is the one that ran its loop.
        grep -q 'control..Control.*run' "$file" && control=$count
    done
    echo "${control:?no control thread among the profiles} $whole"
}

per_publish() { # VIA -> "CONTROL WHOLE" per publish
    local c1 w1 c2 w2
    read -r c1 w1 < <(instructions "$1" "$n1")
    read -r c2 w2 < <(instructions "$1" "$n2")
    echo "$(((c2 - c1) / (n2 - n1))) $(((w2 - w1) / (n2 - n1)))"
}

read -r line_control line_whole < <(per_publish line)
read -r http_control http_whole < <(per_publish http)
printf 'instructions per publish (%d - %d publishes)   control thread   whole process\n' "$n2" "$n1"
printf 'control line                                 %14d   %13d\n' "$line_control" "$line_whole"
printf 'HTTP publish                                 %14d   %13d\n' "$http_control" "$http_whole"
awk -v c="$http_control" -v l="$line_control" -v hw="$http_whole" -v lw="$line_whole" 'BEGIN {
    printf "HTTP / control line: %.2fx on the control thread (target: at most 1.3x), %.2fx on the whole process\n", c / l, hw / lw }'
