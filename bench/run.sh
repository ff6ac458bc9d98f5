#!/usr/bin/env bash
# Benchmark: a release build of user-api on PostgreSQL + Redis (and, for reference, on
# SQLite with the in-process store), seeded, then driven by bench/loadgen.rs.
# Prints a Markdown table per setup. Not part of CI (release build, minutes of load).
#
#   bench/run.sh [concurrency=32] [seconds-per-scenario=10] [profiles=20000]
set -euo pipefail
cd "$(dirname "$0")/.."
conc=${1:-32}
secs=${2:-10}
count=${3:-20000}
pg_admin=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
redis=${REDIS_URL:-redis://127.0.0.1:6379}

cargo build --release --quiet --bin user-api --example loadgen
bin=target/release/user-api
loadgen=target/release/examples/loadgen
work=$(mktemp -d /tmp/user-api-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo "## machine"
echo "- $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "- $(free -g | awk '/Mem:/{print $2}') GiB memory, $(uname -sr)"
echo "- concurrency $conc, $secs s per scenario, $count profiles"

export USER_API__JWT__DEV_KEYS_DIR="$work/keys"
# Dev-mode keys on a PostgreSQL database: refused unless asked for explicitly.
export USER_API_DEV_MODE=1
# Limits out of the way: this measures the service, not the limiter's verdicts.
export USER_API__RATE_LIMITS__PROFILES_READ=1000000000
export USER_API__RATE_LIMITS__PROFILES_UPDATE=1000000000
export USER_API__RATE_LIMITS__PROFILES_BATCH=1000000000
export USER_API__RATE_LIMITS__DEFAULT=1000000000
export USER_API__SERVER__LOG_FORMAT=json
export RUST_LOG=warn

bench_setup() { # name database_url redis_url(or empty)
  local name=$1 db=$2 rurl=$3 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (
    export DATABASE_URL="$db" USER_API_ADDR="127.0.0.1:$port" PREWARM=0
    if [ -n "$rurl" ]; then export REDIS_URL="$rurl"; else unset REDIS_URL; fi
    "$bin" seed --count "$count" >/dev/null
    "$bin" serve >"$work/$name.log" 2>&1 &
    echo $! >"$work/$name.pid"
  )
  pids+=("$(cat "$work/$name.pid")")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  local token ID TOKEN
  # A new admin user (ID= and TOKEN= lines); portable, unlike /proc/sys/kernel/random/uuid.
  eval "$(DATABASE_URL="$db" "$bin" token --role admin)"
  token=$TOKEN
  case "$db" in
    postgres*) psql "$db" -Atqc "select user_id from profiles order by random()" >"$work/ids" ;;
    *) sqlite3 "${db#sqlite://}" "select user_id from profiles order by random()" >"$work/ids" 2>/dev/null ||
         python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print('\n'.join(r[0] for r in c.execute('select user_id from profiles order by random()')))" "${db#sqlite://}" >"$work/ids" ;;
  esac
  echo
  echo "## $name"
  "$loadgen" "http://127.0.0.1:$port" "$token" "$work/ids" "$conc" "$secs"
  kill "$(cat "$work/$name.pid")" 2>/dev/null || true
}

db=user_api_bench_$$
psql "$pg_admin" -qc "create database $db" >/dev/null
trap 'cleanup; psql "$pg_admin" -qc "drop database if exists $db with (force)" >/dev/null 2>&1' EXIT
pg_url="${pg_admin%/*}/$db"
bench_setup "PostgreSQL + Redis" "$pg_url" "$redis"
bench_setup "SQLite + in-process store" "sqlite://$work/bench.db" ""
