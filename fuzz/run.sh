#!/usr/bin/env bash
# Runs every fuzz target in turn at the lowest priority and prints, per target, the time,
# the executions, the corpus size and whether it found anything (docs/fuzzing.md).
#
#   fuzz/run.sh [seconds per target, default 600] [target…]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The corpus grows
# in fuzz/corpus/<target> (not committed); fuzz/seeds/<target> are the committed seeds;
# a crash lands in fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(token bodies ids)
nice -n 19 cargo +nightly fuzz build --sanitizer none -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="artifacts/$t.log"
  mkdir -p artifacts
  start=$(date +%s)
  set +e
  nice -n 19 cargo +nightly fuzz run --sanitizer none -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  took=$(($(date +%s) - start))
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  files=$(find "corpus/$t" -type f | wc -l)
  bytes=$(du -sb "corpus/$t" | cut -f1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  result=$([[ $rc -eq 0 ]] && echo "nothing found" || echo "FOUND: see $log and artifacts/$t/")
  printf '| `%s` | %s s | %s | %s files, %s bytes | %s | %s |\n' "$t" "$took" "${execs:-?}" "$files" "$bytes" "${cov:-?}" "$result"
done
