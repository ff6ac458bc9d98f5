#!/usr/bin/env bash
# The benchmark (docs/benchmarks.md). Not part of CI: it takes the machine for minutes.
#
#   bench/run.sh            10,000 profiles, 15 s per timed scenario (3-5 minutes)
#   bench/run.sh --quick    1,000 profiles, 3 s per scenario: checks the harness end to end
#   bench/run.sh [--profiles N] [--secs S] [--hot H] [--keep] [--out FILE]
#   bench/profile.sh        perf profile of the service during scenario (a)
#
# Installs wrk with apt-get when missing, builds the release binary and the helpers
# (bench/mint.rs, bench/limits.rs), then bench/bench.py does the rest: its own PostgreSQL
# database (on DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres) and its
# own redis-server on a free port, both removed at the end. Results: a table on stdout,
# bench/results/<timestamp>.json and an SVG chart beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bench] %s\n' "$*" >&2; }

apt_install() { # package...
  if [ "$(id -u)" -ne 0 ]; then
    log "missing $*; install it (needs root)"
    exit 1
  fi
  log "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v wrk >/dev/null 2>&1 || apt_install wrk
command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1 || apt_install redis-server
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
command -v python3 >/dev/null 2>&1 || apt_install python3
if [[ " $* " == *" --profile "* ]] && ! command -v perf >/dev/null 2>&1; then
  apt_install linux-perf
fi

log "cargo build --release (user-api, examples mint and limits)"
cargo build --release --quiet --bin user-api --example mint --example limits

exec python3 bench/bench.py "$@"
