#!/usr/bin/env bash
# Property-based API testing with schemathesis against /openapi.json of a running
# instance: zero 5xx, and every response (status, content type, body) as documented.
#
# Runs alone (`scripts/schemathesis.sh`) or from scripts/test.sh. It starts its own
# instance of the debug binary on a free loopback port, in dev mode, on its own database:
# a PostgreSQL database `user_api_st_<random>` when TEST_PG_ADMIN_URL names a server (it
# creates it and drops only that one on exit), else a SQLite file in a temporary
# directory. The cache and limiter are in process (no shared Redis is touched), and the
# limits are raised out of the way.
#
# schemathesis comes from PyPI into a virtualenv under ~/.cache/user-api (reused).
#
#   ST_MAX_EXAMPLES   test cases per operation and token (default 100: about a minute)
#   ST_SEED           a fixed seed to reproduce a run
#   ST_REPORT_DIR     where the JUnit report goes (default target/schemathesis)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[schemathesis]\033[0m %s\n' "$*" >&2; }
cleanup_actions=()
cleanup() {
  local i
  for ((i = ${#cleanup_actions[@]} - 1; i >= 0; i--)); do eval "${cleanup_actions[$i]}" || true; done
}
trap cleanup EXIT INT TERM

venv="${ST_VENV:-$HOME/.cache/user-api/schemathesis-venv}"
if ! "$venv/bin/st" --version >/dev/null 2>&1; then
  log "installing schemathesis into $venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.*"
fi
log "$("$venv/bin/st" --version)"

cargo build --quiet --bin user-api
bin="${CARGO_TARGET_DIR:-target}/debug/user-api"

work=$(mktemp -d /tmp/user-api-st.XXXXXX)
cleanup_actions+=("rm -rf $work")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')

if [[ -n "${TEST_PG_ADMIN_URL:-}" ]] && command -v psql >/dev/null 2>&1; then
  db="user_api_st_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  psql "$TEST_PG_ADMIN_URL" -qc "create database $db" >/dev/null
  cleanup_actions+=("psql '$TEST_PG_ADMIN_URL' -qc 'drop database if exists $db with (force)' >/dev/null 2>&1")
  database_url="${TEST_PG_ADMIN_URL%/*}/$db"
  log "database: PostgreSQL $db"
else
  database_url="sqlite://$work/st.db"
  log "database: SQLite $work/st.db"
fi

# Everything the instance and `user-api token` read; nothing inherited points elsewhere.
unset REDIS_URL REDIS_CLUSTER_URLS JWT_PUBLIC_KEY_FILE JWKS_URL USER_API_CONFIG TRUSTED_PROXIES
export DATABASE_URL="$database_url"
export USER_API_ADDR="127.0.0.1:$port"
export USER_API_DEV_MODE=1
export USER_API__JWT__DEV_KEYS_DIR="$work/keys"
export PREWARM=0
export RUST_LOG="${RUST_LOG:-warn}"
for k in PROFILES_READ PROFILES_UPDATE PROFILES_BATCH DEFAULT PER_ADDRESS; do
  export "USER_API__RATE_LIMITS__$k=1000000000"
done

"$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!
cleanup_actions+=("kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null")
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fsS "$base/health" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.2
done

user=$(cat /proc/sys/kernel/random/uuid)
user_token=$("$bin" token --sub "$user" --role user --ttl 1h)
admin_token=$("$bin" token --sub "$(cat /proc/sys/kernel/random/uuid)" --role admin --ttl 1h)
# The user has a profile, so its own routes answer more than 404.
curl -fsS -X POST "$base/api/profiles" -H "Authorization: Bearer $user_token" \
  -H 'content-type: application/json' -d '{"name": "Schemathesis", "email": "st@example.com"}' >/dev/null

report_dir="${ST_REPORT_DIR:-target/schemathesis}"
mkdir -p "$report_dir"
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
status=0
for who in user admin; do
  token_var="${who}_token"
  log "run as $who: up to ${ST_MAX_EXAMPLES:-100} examples per operation"
  args=(run "$base/openapi.json"
    --checks "$checks"
    --phases examples,coverage,fuzzing
    --max-examples "${ST_MAX_EXAMPLES:-100}"
    --workers 2
    --request-timeout 20
    --suppress-health-check all
    --header "Authorization: Bearer ${!token_var}"
    --report junit --report-junit-path "$report_dir/junit-$who.xml")
  [[ -n "${ST_SEED:-}" ]] && args+=(--seed "$ST_SEED")
  "$venv/bin/st" "${args[@]}" || status=$?
done

if ! kill -0 "$server_pid" 2>/dev/null; then
  log "the server died during the run:"
  tail -50 "$work/server.log" >&2
  status=1
fi
if grep -q '"level":"ERROR"\|panicked' "$work/server.log"; then
  log "the server logged errors:"
  grep '"level":"ERROR"\|panicked' "$work/server.log" | tail -20 >&2
  status=1
fi
if [[ $status -eq 0 ]]; then
  log "no 5xx, every response as documented"
fi
exit "$status"
