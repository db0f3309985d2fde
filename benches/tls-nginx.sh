#!/usr/bin/env bash
# TLS handshakes: what one costs hasses beside what it costs nginx terminating TLS on the same
# host, with the same ECDSA P-256 certificate and the same TLS 1.3 client (hasses-bench's
# rustls), taking turns.
#   benches/tls-nginx.sh [HANDSHAKES] [ROUNDS]     (defaults 1500 and 3)
# Each round: HANDSHAKES full handshakes then as many resumed ones against nginx (one worker),
# then the same against hasses (its defaults, one worker). Each connection is a handshake, a
# `GET /` and its answer, one after the other; the figure is the server's CPU per handshake
# (nginx: its master and worker). Needs nginx (Debian package nginx).
# HASSES=path: that server binary instead of this tree's (a before/after comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/certificate.sh
source benches/certificate.sh
count=${1:-1500}
rounds=${2:-3}
nginx=$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx) || { echo "tls-nginx.sh: needs nginx" >&2; exit 2; }
cargo build --release --quiet --package hasses --package hasses-bench
dir=$(mktemp -d)
hasses_binary=${HASSES:-./target/release/hasses}
nginx_port=${NGINX_PORT:-18443}
hasses_port=${HASSES_PORT:-18444}
certificate "$dir/key.pem" "$dir/cert.pem"
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    fastcgi_temp_path $dir;
    uwsgi_temp_path $dir;
    scgi_temp_path $dir;
    server {
        listen 127.0.0.1:$nginx_port ssl;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;
        location / { return 200 "ok\n"; }
    }
}
CONF
"$nginx" -c "$dir/nginx.conf" &
nginx_master=$!
"$hasses_binary" --port "$hasses_port" --control-port 0 --no-api --workers 1 --log-level 0 \
    --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" >"$dir/hasses.log" 2>&1 &
hasses=$!
trap 'kill $hasses $nginx_master 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
sleep 1
nginx_worker=$(pgrep -P "$nginx_master" | head -1)
handshakes() { # PORT PIDS
    ./target/release/hasses-bench tls-handshakes -n "$count" --sse "127.0.0.1:$1" --tls \
        --ca "$dir/cert.pem" --tls-resume --server-pid "$2" | awk '/^(full|resumed)/ {print $2}'
}
echo "round  nginx full  nginx resumed  hasses full  hasses resumed  full/nginx  resumed/nginx full"
for round in $(seq "$rounds"); do
    read -r -d '' nf nr < <(handshakes "$nginx_port" "$nginx_master,$nginx_worker"; printf '\0') || true
    read -r -d '' hf hr < <(handshakes "$hasses_port" "$hasses"; printf '\0') || true
    awk -v r="$round" -v nf="$nf" -v nr="$nr" -v hf="$hf" -v hr="$hr" 'BEGIN {
        printf "%5d  %7.1f µs  %10.1f µs  %8.1f µs  %11.1f µs  %9.2f×  %17.2f×\n", r, nf, nr, hf, hr, hf / nf, hr / nf }'
done
