#!/usr/bin/env bash
# CPU profile of the service during scenario (a) (cached GET over the hot set), for
# before/after comparisons: sets up as bench/run.sh does (installing linux-perf with
# apt-get when `perf` is missing), runs (a) once plainly and once under
#   perf record -e cpu-clock -g -p <service pid>
# and prints the top entries of `perf report --no-children --stdio`. The perf data stays in
# bench/results/perf-<timestamp>/perf.data.
#
#   bench/profile.sh [--quick] [--secs S] [--perf-top N]
exec "$(dirname "$0")/run.sh" --profile "$@"
