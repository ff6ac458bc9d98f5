#!/usr/bin/env bash
# The one command that runs every test: provisions PostgreSQL and Redis, then runs
# rustfmt, clippy, a check that the fuzz targets compile, schemathesis
# (scripts/schemathesis.sh; SKIP_SCHEMATHESIS=1 skips it) and the whole test suite against them.
#
# Servers, in order of preference:
#   1. the ones named by DATABASE_URL (postgres://…) and REDIS_URL;
#   2. the ones answering on the standard local ports (5432, 6379);
#   3. throwaway ones started here on free ports (installed with apt-get when
#      missing), stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every line carries the time since the start, so a long compile never looks like a hang.
mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
if [ -t 2 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
log() { printf '%s[test.sh %s]%s %s\n' "$bold" "$(mmss "$SECONDS")" "$plain" "$*" >&2; }
# Phases: each one logs when it starts and how long it took when the next one starts.
phase_name='' phase_start=0
end_phase() { # outcome
  if [ -n "$phase_name" ]; then log "$phase_name: $1 after $(mmss $((SECONDS - phase_start)))"; fi
  phase_name=''
}
phase() { # name [what to print instead of the name]
  end_phase done
  phase_name="$1" phase_start=$SECONDS
  log "${2:-$1}"
}
cleanup_actions=()
cleanup() {
  local rc=$? i
  end_phase "$([ "$rc" -eq 0 ] && echo done || echo "FAILED (exit $rc)")"
  for ((i = ${#cleanup_actions[@]} - 1; i >= 0; i--)); do eval "${cleanup_actions[$i]}" || true; done
  log "total $(mmss "$SECONDS")"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000))
}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    log "missing $*; install it (needs root) or set DATABASE_URL/REDIS_URL"
    exit 1
  fi
  log "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bin_dir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

pg_answers() { # url
  if command -v psql >/dev/null 2>&1; then
    psql "$1" -Atqc 'select 1' >/dev/null 2>&1
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

# TEST_FORCE_THROWAWAY=1 skips 1 and 2 (to exercise step 3 on a machine that has servers);
# TEST_PROVISION_ONLY=1 stops after provisioning (and cleans up).
force="${TEST_FORCE_THROWAWAY:-0}"

# ---- PostgreSQL -------------------------------------------------------------
if [[ "$force" != 1 && "${DATABASE_URL:-}" == postgres* ]]; then
  export TEST_PG_ADMIN_URL="$DATABASE_URL"
  log "PostgreSQL: DATABASE_URL"
elif [[ "$force" != 1 ]] && pg_answers "postgres://postgres@127.0.0.1:5432/postgres"; then
  export TEST_PG_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
  log "PostgreSQL: local server on 5432"
else
  bindir=$(pg_bin_dir) || { apt_install postgresql; bindir=$(pg_bin_dir); }
  port=$(free_port)
  pgdir=$(mktemp -d /tmp/user-api-pg.XXXXXX)
  run_as=()
  if [ "$(id -u)" -eq 0 ]; then
    # initdb refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$pgdir"
    run_as=(runuser -u postgres --)
  fi
  log "PostgreSQL: starting a throwaway server on port $port"
  "${run_as[@]}" "$bindir/initdb" -D "$pgdir/data" -U postgres --auth=trust >/dev/null
  "${run_as[@]}" "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
    -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null
  cleanup_actions+=("${run_as[*]} $bindir/pg_ctl -D $pgdir/data -m immediate stop >/dev/null 2>&1; rm -rf $pgdir")
  export TEST_PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
fi

# Each test creates its own database; drop those of earlier runs now and ours on exit.
drop_test_databases() {
  command -v psql >/dev/null 2>&1 || return 0
  local db
  for db in $(psql "$TEST_PG_ADMIN_URL" -Atqc "select datname from pg_database where datname like 'user_api_test_%'" 2>/dev/null); do
    psql "$TEST_PG_ADMIN_URL" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  done
}
drop_test_databases
cleanup_actions+=("drop_test_databases")

# ---- Redis ------------------------------------------------------------------
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
if [[ "$force" != 1 && -n "${REDIS_URL:-}" ]]; then
  export TEST_REDIS_URL="$REDIS_URL"
  log "Redis: REDIS_URL"
elif [[ "$force" != 1 ]] && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  export TEST_REDIS_URL="redis://127.0.0.1:6379"
  log "Redis: local server on 6379"
else
  port=$(free_port)
  rdir=$(mktemp -d /tmp/user-api-redis.XXXXXX)
  log "Redis: starting a throwaway server on port $port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$rdir" \
    --daemonize yes --pidfile "$rdir/redis.pid" --logfile "$rdir/log" >/dev/null
  cleanup_actions+=("kill \$(cat $rdir/redis.pid) 2>/dev/null; rm -rf $rdir")
  for _ in $(seq 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  export TEST_REDIS_URL="redis://127.0.0.1:$port"
fi
# Temporary files of the tests (SQLite files, keys, test-owned servers) go here.
TMPDIR=$(mktemp -d /tmp/user-api-tests.XXXXXX)
export TMPDIR
cleanup_actions+=("rm -rf $TMPDIR")
# Tests start their own extra redis-server instances (outages, cluster) with this binary.
export REDIS_SERVER_BIN="$(command -v redis-server)"

if [[ "${TEST_PROVISION_ONLY:-0}" == 1 ]]; then
  psql "$TEST_PG_ADMIN_URL" -Atqc 'select version()'
  redis-cli -u "$TEST_REDIS_URL" ping
  exit 0
fi

# ---- Checks and tests -------------------------------------------------------
# Cargo prints its own progress (a bar on a terminal, one line per crate otherwise). On a
# fresh checkout with 2 cores, clippy takes about 4 minutes and building the tests about
# 4 more; later runs take seconds to build.
phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy" "cargo clippy --all-targets (a first run compiles every dependency: minutes)"
cargo clippy --all-targets -- -D warnings
# The fuzz targets are a crate of their own (fuzz/, see docs/fuzzing.md) that nothing else
# builds: check that they still compile (stable is enough to check; running them needs
# nightly), in a target directory of their own so the service's builds are not disturbed.
phase "fuzz targets" "cargo check --bins in fuzz/ (a first run compiles its dependencies: minutes)"
fuzz_target_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")/fuzz"
(cd fuzz && CARGO_TARGET_DIR="$fuzz_target_dir" cargo check --bins)

# Ignored tests show as "skipped" in the summary; say which and how to run them.
ignored=$(awk '/^[[:space:]]*#\[ignore/ { ig = 1; next }
  ig && match($0, /fn [A-Za-z0-9_]+/) {
    f = FILENAME; sub(/^tests\/it\//, "", f); sub(/\.rs$/, "", f)
    printf "%s%s::%s", sep, f, substr($0, RSTART + 3, RLENGTH - 3); sep = ", "; ig = 0 }' tests/it/*.rs)

# Property-based API tests against /openapi.json of a running instance (its own database;
# about a minute). Before the test suite, so the run closes on the test runner's summary.
if [[ "${SKIP_SCHEMATHESIS:-0}" != 1 ]]; then
  phase "schemathesis" "schemathesis against /openapi.json (about a minute)"
  scripts/schemathesis.sh
fi
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; run them first, when there are any (so the run still
  # closes on nextest's summary).
  if grep -rqsE '^[[:space:]]*//[/!].*```' src; then
    phase "cargo test --doc"
    cargo test --doc
  fi
  phase "tests" "tests (cargo nextest run; building them takes minutes the first time)"
  if [ -n "$ignored" ]; then log "skipped on purpose (#[ignore]d timings, see docs/testing.md): $ignored; run them with: scripts/test.sh --run-ignored only <name>"; fi
  cargo nextest run --no-fail-fast "$@"
else
  phase "tests" "tests (cargo test; building them takes minutes the first time)"
  if [ -n "$ignored" ]; then log "ignored on purpose (#[ignore]d timings, see docs/testing.md): $ignored; run them with: scripts/test.sh -- --ignored <name>"; fi
  cargo test --no-fail-fast "$@"
fi
