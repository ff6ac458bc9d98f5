#!/usr/bin/env bash
# A production-shaped stack on one machine (docs/stack.md).
#
#   scripts/stack.sh up       start everything, print the URL, the ports and how to mint a token
#   scripts/stack.sh status   every process, the Redis Cluster state and /ready of each instance
#   scripts/stack.sh logs     tail -f the instances' JSON logs
#   scripts/stack.sh down     stop everything it started and remove its directory
#   scripts/stack.sh auth …   the fake auth service (scripts/fake_auth.py): user events, tokens
#                             with a jti, blacklist keys
#   scripts/stack.sh start-instance N / stop-instance N [SIGNAL]   restart or stop one instance
#
# Also used by scripts/faults.py: start-jwks, stop-jwks, start-redis N, pg-restart,
# token [--sub ID] [--role R].
#
# What runs (as root on Debian; nginx, postgresql and redis-server installed with apt-get
# when missing), all on 127.0.0.1 and on free ports chosen at `up`:
#   - PostgreSQL 15: a throwaway cluster (initdb as the `postgres` user), database `userapi`;
#   - a Redis Cluster of 3 masters with one replica each (6 redis-server, no persistence);
#   - a JWKS server (python3 -m http.server) serving jwks.json for a key pair made here;
#   - three release `user-api` instances (JWKS_URL over plain http, allowed for 127.0.0.1,
#     REDIS_CLUSTER_URLS, DATABASE_URL, TRUSTED_PROXIES=127.0.0.1/32, JSON logs to files);
#   - nginx as the round-robin load balancer, adding X-Forwarded-For and X-Request-Id and
#     writing that request id in its access log.
# State lives in $STACK_DIR (default /tmp/user-api-stack): ports.env, pid files, logs,
# data directories, the key pair and copies of the binaries.
#
# USER_API__* variables in the environment of `up` reach the instances (e.g. limits:
# USER_API__RATE_LIMITS__PROFILES_READ=1000000); they are saved in instance.env so that
# start-instance restarts an instance with the same configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
STACK_DIR=${STACK_DIR:-/tmp/user-api-stack}
S=$STACK_DIR
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
INSTANCES=3
REDIS_NODES=6

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

apt_install() { # package...
  [ "$(id -u)" -eq 0 ] || die "missing $*; install it (needs root)"
  log "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need_tools() {
  [ "$(id -u)" -eq 0 ] || die "run as root (initdb runs as the postgres user through runuser)"
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx-light
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || apt_install redis-server
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    apt_install postgresql
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  command -v curl >/dev/null 2>&1 || apt_install curl
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  command -v python3 >/dev/null 2>&1 || apt_install python3
}

load_ports() {
  [ -f "$S/ports.env" ] || die "the stack is not up ($S/ports.env missing); run: scripts/stack.sh up"
  # shellcheck disable=SC1091
  . "$S/ports.env"
}

alive() { # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() { # seconds description command...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

# Free ports: NGINX, API1..3, PG, JWKS, REDIS1..6 (whose cluster bus port +10000 must be free too).
pick_ports() {
  python3 - <<'EOF'
import socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for base in range(18080, 30000, 20):
    ports = list(range(base, base + 12))
    if all(free(p) for p in ports) and all(free(p + 10000) for p in ports[6:]):
        names = ["NGINX_PORT", "API_PORT_1", "API_PORT_2", "API_PORT_3", "PG_PORT", "JWKS_PORT"] + \
                [f"REDIS_PORT_{i}" for i in range(1, 7)]
        for n, p in zip(names, ports):
            print(f"{n}={p}")
        break
else:
    raise SystemExit("no free port range")
EOF
}

# ---------------------------------------------------------------- components

start_pg() {
  mkdir -p "$S/pg"
  chown postgres:postgres "$S/pg"
  if [ ! -f "$S/pg/data/PG_VERSION" ]; then
    runuser -u postgres -- "$PG_BIN/initdb" -D "$S/pg/data" -U postgres -A trust -E UTF8 \
      --no-instructions >"$S/logs/initdb.log" 2>&1 || die "initdb failed: see $S/logs/initdb.log"
  fi
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$S/pg/data" -l "$S/pg/postgres.log" -w -t 30 \
    -o "-p $PG_PORT -k $S/pg -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAtc "CREATE DATABASE userapi" >/dev/null
}

pg_restart() {
  load_ports
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$S/pg/data" -l "$S/pg/postgres.log" -w -t 30 -m fast \
    -o "-p $PG_PORT -k $S/pg -c listen_addresses=127.0.0.1 -c max_connections=200" restart >/dev/null
}

redis_start_node() { # index
  local i=$1 port_var="REDIS_PORT_$1"
  local port=${!port_var}
  mkdir -p "$S/redis/$i"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
    --dir "$S/redis/$i" --pidfile "$S/redis/$i/redis.pid" --logfile "$S/redis/$i/redis.log" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --save '' --appendonly no >/dev/null
  wait_for 10 "redis $port" redis-cli -p "$port" ping
}

start_redis() {
  local i seeds=()
  for i in $(seq 1 $REDIS_NODES); do
    redis_start_node "$i"
    local v="REDIS_PORT_$i"
    seeds+=("127.0.0.1:${!v}")
  done
  redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$S/logs/cluster-create.log" 2>&1 \
    || die "redis-cli --cluster create failed: see $S/logs/cluster-create.log"
  wait_for 30 "cluster_state:ok" sh -c "redis-cli -p $REDIS_PORT_1 cluster info | grep -q cluster_state:ok"
}

make_keys() {
  # The key pair: user-api's dev keys (private.pem, public.pem; tokens carry kid "dev"),
  # made in dev mode with no key source in this environment.
  mkdir -p "$S/keys" "$S/jwks"
  env -u JWKS_URL -u JWT_PUBLIC_KEY_FILE USER_API__JWT__DEV_KEYS_DIR="$S/keys" \
    DATABASE_URL="sqlite://$S/token-scratch.db" "$S/bin/user-api" token --sub 00000000-0000-4000-8000-000000000000 >/dev/null 2>&1
  python3 - "$S/keys/public.pem" "$S/jwks/jwks.json" <<'EOF'
import base64, json, re, subprocess, sys
pem, out = sys.argv[1], sys.argv[2]
text = subprocess.run(["openssl", "rsa", "-pubin", "-in", pem, "-noout", "-text"],
                      check=True, capture_output=True, text=True).stdout
mod = subprocess.run(["openssl", "rsa", "-pubin", "-in", pem, "-noout", "-modulus"],
                     check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
exp = int(re.search(r"Exponent: (\d+)", text).group(1))
def b64(n):
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "dev", "n": b64(int(mod, 16)), "e": b64(exp)}
json.dump({"keys": [jwk]}, open(out, "w"), indent=1)
EOF
}

start_jwks() {
  load_ports
  alive "$S/jwks.pid" && return 0
  setsid nohup python3 -m http.server "$JWKS_PORT" --bind 127.0.0.1 --directory "$S/jwks" \
    >>"$S/logs/jwks.log" 2>&1 </dev/null &
  echo $! >"$S/jwks.pid"
  wait_for 10 "JWKS server" curl -fsS "http://127.0.0.1:$JWKS_PORT/jwks.json"
}

stop_jwks() {
  load_ports
  if alive "$S/jwks.pid"; then kill "$(cat "$S/jwks.pid")"; fi
  rm -f "$S/jwks.pid"
}

start_instance() { # index
  load_ports
  local i=$1 port_var="API_PORT_$1"
  local port=${!port_var}
  alive "$S/api-$i.pid" && die "instance $i already running (pid $(cat "$S/api-$i.pid"))"
  (
    set -a
    # shellcheck disable=SC1091
    . "$S/instance.env"
    set +a
    export USER_API_ADDR="127.0.0.1:$port"
    cd "$S"
    exec setsid "$S/bin/user-api" serve >>"$S/logs/api-$i.log" 2>&1 </dev/null
  ) &
  echo $! >"$S/api-$i.pid"
  wait_for 60 "instance $i /ready" curl -fsS "http://127.0.0.1:$port/ready"
}

stop_instance() { # index [signal]
  local i=$1 sig=${2:-TERM}
  if alive "$S/api-$i.pid"; then
    local pid; pid=$(cat "$S/api-$i.pid")
    kill "-$sig" "$pid"
    local end=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$S/api-$i.pid"
}

write_instance_env() {
  local urls=() i v
  for i in $(seq 1 $REDIS_NODES); do v="REDIS_PORT_$i"; urls+=("redis://127.0.0.1:${!v}"); done
  {
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/userapi"
    echo "REDIS_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")"
    echo "JWKS_URL=http://127.0.0.1:$JWKS_PORT/jwks.json"
    echo "TRUSTED_PROXIES=127.0.0.1/32"
    echo "USER_API__SERVER__LOG_FORMAT=json"
    echo "RUST_LOG=${RUST_LOG:-info}"
    # Caller's overrides (limits, TTLs, ...), quoted for the shell.
    env | grep -E '^USER_API__[A-Z0-9_]+=' | grep -vE '^USER_API__(SERVER__LOG_FORMAT|JWT__DEV_KEYS_DIR)=' \
      | while IFS='=' read -r k val; do printf '%s=%q\n' "$k" "$val"; done || true
    [ -n "${PREWARM:-}" ] && echo "PREWARM=$PREWARM"
    [ -n "${RATE_LIMIT_FAIL:-}" ] && echo "RATE_LIMIT_FAIL=$RATE_LIMIT_FAIL"
    true
  } >"$S/instance.env"
}

start_nginx() {
  mkdir -p "$S/nginx/logs" "$S/nginx/tmp"
  chown nobody "$S/nginx/tmp"
  cat >"$S/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $S/nginx/nginx.pid;
error_log $S/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  # The client's X-Request-Id when it sent one, else nginx's own \$request_id.
  map \$http_x_request_id \$req_id { default \$http_x_request_id; "" \$request_id; }
  # The request id nginx passes upstream is in every access log line (rid=), so one id can
  # be followed from here into the instance's "Request completed" line.
  log_format stack '\$remote_addr [\$time_iso8601] "\$request" \$status \$body_bytes_sent '
                   'rid=\$req_id upstream=\$upstream_addr upstream_status=\$upstream_status '
                   'rt=\$request_time urt=\$upstream_response_time';
  access_log $S/nginx/logs/access.log stack;
  client_body_temp_path $S/nginx/tmp/body;
  proxy_temp_path $S/nginx/tmp/proxy;
  fastcgi_temp_path $S/nginx/tmp/fastcgi;
  uwsgi_temp_path $S/nginx/tmp/uwsgi;
  scgi_temp_path $S/nginx/tmp/scgi;
  upstream user_api {
    server 127.0.0.1:$API_PORT_1;
    server 127.0.0.1:$API_PORT_2;
    server 127.0.0.1:$API_PORT_3;
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://user_api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Request-Id \$req_id;
      add_header X-Upstream \$upstream_addr always;
    }
  }
}
EOF
  nginx -p "$S/nginx" -c "$S/nginx/nginx.conf" -t >"$S/logs/nginx-test.log" 2>&1 \
    || die "nginx -t failed: see $S/logs/nginx-test.log"
  nginx -p "$S/nginx" -c "$S/nginx/nginx.conf"
  wait_for 10 "nginx" curl -fsS "http://127.0.0.1:$NGINX_PORT/health"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  if [ -f "$S/ports.env" ]; then
    die "the stack is already up ($S exists); scripts/stack.sh status, or scripts/stack.sh down first"
  fi
  need_tools
  local target=${CARGO_TARGET_DIR:-$REPO/target}
  local bin=$target/release/user-api
  # Always through cargo when there is one (a no-op when up to date), so a stale binary
  # left in the target directory is never what the stack runs.
  if command -v cargo >/dev/null 2>&1; then
    log "cargo build --release (target $target)"
    cargo build --release --quiet --bin user-api --example mint
  fi
  [ -x "$bin" ] && [ -x "$target/release/examples/mint" ] \
    || die "no $bin or $target/release/examples/mint (and no cargo to build them)"
  mkdir -p "$S/bin" "$S/logs"
  chmod 755 "$S"
  cp "$bin" "$target/release/examples/mint" "$S/bin/"
  pick_ports >"$S/ports.env.tmp"
  # shellcheck disable=SC1091
  . "$S/ports.env.tmp"
  mv "$S/ports.env.tmp" "$S/ports.env"
  trap 'log "up failed; cleaning up"; cmd_down >/dev/null 2>&1 || true' ERR
  log "postgresql on 127.0.0.1:$PG_PORT"; start_pg
  log "redis cluster on 127.0.0.1:$REDIS_PORT_1-$REDIS_PORT_6"; start_redis
  log "key pair and JWKS on 127.0.0.1:$JWKS_PORT"; make_keys; start_jwks
  write_instance_env
  local i v
  for i in $(seq 1 $INSTANCES); do
    v="API_PORT_$i"; log "user-api instance $i on 127.0.0.1:${!v}"; start_instance "$i"
  done
  log "nginx on 127.0.0.1:$NGINX_PORT"; start_nginx
  trap - ERR
  cat <<EOF

The stack is up (state in $S).
  URL (nginx, round robin):  http://127.0.0.1:$NGINX_PORT
  instances:                 http://127.0.0.1:$API_PORT_1  http://127.0.0.1:$API_PORT_2  http://127.0.0.1:$API_PORT_3
  postgresql:                postgres://postgres@127.0.0.1:$PG_PORT/userapi
  redis cluster:             127.0.0.1:$REDIS_PORT_1 .. 127.0.0.1:$REDIS_PORT_6
  jwks:                      http://127.0.0.1:$JWKS_PORT/jwks.json
Mint a token (signed with the stack's key; prints ID=... and TOKEN=...):
  eval "\$(scripts/stack.sh token)"            # a new user id, role user
  scripts/stack.sh token --sub <uuid> --role admin
The fake auth service (user events, tokens with a jti, blacklist keys; docs/stack.md):
  scripts/stack.sh auth create|update|login|logout|deactivate|reactivate|listen …
Then: scripts/stack.sh status | logs | stop-instance N | start-instance N | down
EOF
}

cmd_token() {
  load_ports
  env -u JWKS_URL -u JWT_PUBLIC_KEY_FILE USER_API__JWT__DEV_KEYS_DIR="$S/keys" \
    DATABASE_URL="sqlite://$S/token-scratch.db" "$S/bin/user-api" token "$@"
}

cmd_status() {
  load_ports
  local i v p
  printf '%-14s %-8s %-6s %s\n' component pid state address
  row() { # name pidfile address
    local pid=- st=down
    if [ -f "$2" ]; then pid=$(head -1 "$2"); kill -0 "$pid" 2>/dev/null && st=up; fi
    printf '%-14s %-8s %-6s %s\n' "$1" "$pid" "$st" "$3"
  }
  row postgresql "$S/pg/data/postmaster.pid" "127.0.0.1:$PG_PORT"
  for i in $(seq 1 $REDIS_NODES); do
    v="REDIS_PORT_$i"
    local role; role=$(redis-cli -p "${!v}" role 2>/dev/null | head -1 || true)
    row "redis-$i" "$S/redis/$i/redis.pid" "127.0.0.1:${!v} ${role:-unreachable}"
  done
  row jwks "$S/jwks.pid" "http://127.0.0.1:$JWKS_PORT/jwks.json"
  for i in $(seq 1 $INSTANCES); do
    v="API_PORT_$i"; row "user-api-$i" "$S/api-$i.pid" "http://127.0.0.1:${!v}"
  done
  row nginx "$S/nginx/nginx.pid" "http://127.0.0.1:$NGINX_PORT"
  echo
  echo "redis cluster: $(redis-cli -p "$REDIS_PORT_1" cluster info 2>/dev/null | grep -E 'cluster_state' | tr -d '\r' || echo unreachable)"
  for i in $(seq 1 $INSTANCES); do
    v="API_PORT_$i"
    p=$(curl -sS -m 3 -w ' %{http_code}' "http://127.0.0.1:${!v}/ready" 2>&1 || true)
    echo "user-api-$i /ready: $p"
  done
  p=$(curl -sS -m 3 -w ' %{http_code}' "http://127.0.0.1:$NGINX_PORT/ready" 2>&1 || true)
  echo "nginx      /ready: $p"
}

cmd_logs() {
  load_ports
  exec tail -n "${LINES:-20}" -F "$S"/logs/api-*.log
}

# The ports recorded in ports.env (and the Redis nodes' cluster bus ports), one per line.
recorded_ports() {
  [ -f "$S/ports.env" ] || return 0
  local k v
  while IFS='=' read -r k v; do
    [ -n "$v" ] || continue
    echo "$v"
    case $k in REDIS_PORT_*) echo $((v + 10000)) ;; esac
  done <"$S/ports.env"
}

listening() { # port: something accepts connections on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# What is still there of the stack: its recorded pids alive, its ports taken, or a process
# whose command line names $S. Prints one line each; nothing when all is gone.
leftovers() { # pid...
  local pid port
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && echo "pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"; done
  for port in $(recorded_ports); do listening "$port" && echo "port $port still accepts connections"; done
  pgrep -af -- "$S" 2>/dev/null | grep -v "^$$ " || true
}

cmd_down() {
  if [ ! -d "$S" ]; then log "nothing to stop ($S does not exist)"; return 0; fi
  local i pids=() f
  # Every pid the stack recorded, taken before stopping anything (the pid files go with it).
  for f in "$S/nginx/nginx.pid" "$S/jwks.pid" "$S"/api-*.pid "$S"/redis/*/redis.pid "$S/pg/data/postmaster.pid"; do
    [ -f "$f" ] && pids+=("$(head -1 "$f")")
  done
  if [ -f "$S/nginx/nginx.pid" ]; then
    nginx -p "$S/nginx" -c "$S/nginx/nginx.conf" -s quit 2>/dev/null || kill "$(cat "$S/nginx/nginx.pid")" 2>/dev/null || true
  fi
  for i in $(seq 1 $INSTANCES); do stop_instance "$i" TERM; done
  if [ -f "$S/jwks.pid" ]; then kill "$(cat "$S/jwks.pid")" 2>/dev/null || true; fi
  for i in $(seq 1 $REDIS_NODES); do
    if alive "$S/redis/$i/redis.pid"; then kill "$(cat "$S/redis/$i/redis.pid")" 2>/dev/null || true; fi
  done
  if [ -f "$S/pg/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$S/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  # Wait for the recorded pids to exit and the recorded ports to close (redis-server renames
  # itself "redis-server 127.0.0.1:<port>", so its command line does not name $S).
  local end=$((SECONDS + 20)) left
  while left=$(leftovers "${pids[@]}") && [ -n "$left" ] && [ $SECONDS -lt $end ]; do sleep 0.2; done
  if [ -n "$left" ]; then
    log "still there after 20 s:"; printf '%s\n' "$left" >&2
  fi
  local nports; nports=$(recorded_ports | wc -l)
  rm -rf "$S"
  if [ -z "$left" ]; then
    log "down: ${#pids[@]} recorded processes gone, $nports recorded ports closed, $S removed"
  else
    log "down: $S removed, but the processes above are left"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  token) shift; cmd_token "$@" ;;
  start-instance) load_ports; start_instance "$2" ;;
  stop-instance) load_ports; stop_instance "$2" "${3:-TERM}" ;;
  start-jwks) start_jwks ;;
  stop-jwks) stop_jwks ;;
  start-redis) load_ports; redis_start_node "$2" ;;
  pg-restart) pg_restart ;;
  auth) shift; load_ports; exec python3 "$REPO/scripts/fake_auth.py" --stack-dir "$S" "$@" ;;
  *) echo "usage: scripts/stack.sh up|down|status|logs|auth …|start-instance N|stop-instance N [SIG] (token|start-jwks|stop-jwks|start-redis N|pg-restart)" >&2; exit 2 ;;
esac
