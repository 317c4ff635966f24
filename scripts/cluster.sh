#!/usr/bin/env bash
# A local bahi cluster in one command: N `bahi serve` nodes on one PostgreSQL database, and
# Debian's nginx in front of them as a round-robin load balancer. Prints the URL, then runs
# until Ctrl-C (or SIGTERM), when it stops every process it started.
#
#   bash scripts/cluster.sh [NODES]          # default 3 nodes
#
# Environment (all optional):
#   BAHI_CLUSTER_DATABASE  postgres://USER@HOST/DB    default postgres://postgres@127.0.0.1:5432/bahi_cluster
#                          (created when missing; the nodes share its log)
#   BAHI_CLUSTER_PORT      the load balancer's port   default 8080
#   BAHI_OPERATOR_KEY      the cluster's operator key default: generated and printed
#   BAHI_BINARY            a built bahi binary        default: cargo build --release
set -euo pipefail
cd "$(dirname "$0")/.."

nodes="${1:-3}"
database="${BAHI_CLUSTER_DATABASE:-postgres://postgres@127.0.0.1:5432/bahi_cluster}"
port="${BAHI_CLUSTER_PORT:-8080}"

fail() { echo "cluster.sh: $*" >&2; exit 1; }

[[ "$nodes" =~ ^[1-9][0-9]?$ ]] || fail "NODES must be 1 to 99, not $nodes"
nginx="$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)"
[ -n "$nginx" ] || fail "no nginx: install Debian's package (apt-get install nginx)"
command -v psql > /dev/null || fail "no psql: install PostgreSQL's client (apt-get install postgresql-client)"

binary="${BAHI_BINARY:-}"
if [ -z "$binary" ]; then
    cargo build --release --quiet
    binary="$PWD/target/release/bahi"
fi
[ -x "$binary" ] || fail "$binary is not an executable bahi"

# Create the database when missing: the nodes migrate it themselves.
name="${database##*/}"; name="${name%%\?*}"
server_url="${database%/*}/postgres"
[[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || fail "database name $name must be a plain identifier"
if ! psql "$server_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    psql "$server_url" -qc "CREATE DATABASE $name" || fail "could not create database $name at $server_url"
fi

# Every node of a cluster shares the operator key, the key-encryption key and the issuer.
operator_key="${BAHI_OPERATOR_KEY:-operator-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
key_encryption_key="${BAHI_KEY_ENCRYPTION_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
directory="$(mktemp -d -t bahi-cluster.XXXXXX)"
pids=()
stop() {
    trap - EXIT INT TERM
    [ "${#pids[@]}" -gt 0 ] && kill "${pids[@]}" 2> /dev/null
    wait 2> /dev/null || true
    rm -rf "$directory"
}
trap stop EXIT
trap 'exit 0' INT TERM

upstreams=""
for index in $(seq 1 "$nodes"); do
    log="$directory/node-$index.log"
    BAHI_OPERATOR_KEY="$operator_key" BAHI_KEY_ENCRYPTION_KEY="$key_encryption_key" \
        BAHI_ISSUER="http://127.0.0.1:$port" BAHI_CLUSTER_NODES="$nodes" \
        "$binary" serve --listen 127.0.0.1:0 --database "$database" > "$log" 2>&1 &
    pids+=("$!")
    address=""
    for _ in $(seq 1 600); do
        address="$(sed -n 's|^bahi listening on http://||p' "$log" | head -n1)"
        [ -n "$address" ] && break
        kill -0 "${pids[-1]}" 2> /dev/null || fail "node $index stopped: $(tail -n 5 "$log")"
        sleep 0.1
    done
    [ -n "$address" ] || fail "node $index did not start within 60 s: $(tail -n 5 "$log")"
    echo "cluster.sh: node $index on http://$address (log $log)"
    upstreams+="        server $address;"$'\n'
done

cat > "$directory/nginx.conf" << EOF
daemon off;
master_process off;
pid $directory/nginx.pid;
error_log $directory/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $directory/client_body;
    proxy_temp_path $directory/proxy;
    fastcgi_temp_path $directory/fastcgi;
    uwsgi_temp_path $directory/uwsgi;
    scgi_temp_path $directory/scgi;
    upstream bahi {
$upstreams        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port;
        client_max_body_size 8m;
        location / {
            proxy_pass http://bahi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Streams (the inference proxy) go through as they come.
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
EOF
"$nginx" -t -q -p "$directory/" -e "$directory/nginx-error.log" -c "$directory/nginx.conf" \
    || fail "nginx rejected its configuration: $(cat "$directory/nginx-error.log")"
"$nginx" -p "$directory/" -e "$directory/nginx-error.log" -c "$directory/nginx.conf" &
pids+=("$!")
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/healthz" > /dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/healthz" > /dev/null 2>&1 \
    || fail "the load balancer does not answer: $(cat "$directory/nginx-error.log")"

echo "cluster.sh: operator key: $operator_key"
echo "cluster.sh: $nodes nodes on $database behind nginx; Ctrl-C stops them all"
echo "bahi cluster on http://127.0.0.1:$port"
wait
