#!/usr/bin/env python3
"""Soak on the production-shaped stack (docs/reliability.md). Not run by CI.

    python3 scripts/soak.py [--minutes 10] [--rate 100] [--users 2000] [--keep]

Brings the stack up (scripts/stack.sh up; refuses if one is already up) with limits high
enough for the mix, seeds users, then runs the benchmark's 90/10 GET/PUT mix through nginx
at a fixed rate for --minutes, sampling VmRSS of each instance (/proc/<pid>/status) every
30 s. Prints the RSS table, the statuses, and the growth from minute 2 to the end per
instance (the goal: under 10 %, and no 5xx). Afterwards checks every written user through
each instance against the database, as scripts/faults.py does.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
import loadgen  # noqa: E402

S = loadgen.STACK_DIR


def rss_kib(i):
    pid = open(f"{S}/api-{i}.pid").read().strip()
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.path.exists(f"{S}/ports.env"):
        sys.exit(f"[soak] a stack is already up in {S}: scripts/stack.sh down first")
    env = dict(os.environ)
    env.update({"USER_API__RATE_LIMITS__PROFILES_READ": "1000000",
                "USER_API__RATE_LIMITS__PROFILES_UPDATE": "1000000"})
    subprocess.run([faults.STACK, "up"], check=True, env=env, stdout=subprocess.DEVNULL)
    try:
        ports = loadgen.read_ports()
        inst_env = dict(os.environ)
        for line in open(f"{S}/instance.env"):
            k, _, v = line.strip().partition("=")
            if k:
                inst_env[k] = v
        subprocess.run([f"{S}/bin/user-api", "seed", "--count", str(args.users)], check=True, env=inst_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ids = [r[0] for r in loadgen.psql(ports["PG_PORT"], f"SELECT user_id FROM profiles LIMIT {args.users}")]
        users = loadgen.Users(faults.mint(ids, "user"))
        rec, stop = loadgen.Recorder(), asyncio.Event()
        t0 = time.time()
        mix = asyncio.create_task(loadgen.run_mix("127.0.0.1", ports["NGINX_PORT"], users, rec, args.rate, stop))
        samples = []
        end = t0 + args.minutes * 60
        while True:
            el = time.time() - t0
            row = [round(el)] + [rss_kib(i) for i in (1, 2, 3)]
            window = rec.between(time.time() - 30, time.time())
            s = loadgen.summarize(window)
            samples.append(row + [s["requests"], s["p99_ms"], sum(s["non2xx"].values())])
            print(f"[soak] t={row[0]:4d}s rss KiB {row[1:4]} last 30 s: {s}", file=sys.stderr, flush=True)
            if time.time() >= end:
                break
            await asyncio.sleep(min(30, max(0, end - time.time())))
        stop.set()
        await mix
        total = loadgen.summarize(rec.records)
        check = await loadgen.verify(users, ports)
        print("| t (s) | user-api-1 RSS (MiB) | user-api-2 | user-api-3 | requests (last 30 s) | p99 (ms) | non-2xx |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in samples:
            print(f"| {r[0]} | {r[1] / 1024:.1f} | {r[2] / 1024:.1f} | {r[3] / 1024:.1f} | {r[4]} | {r[5]} | {r[6]} |")
        base = next((r for r in samples if r[0] >= 120), samples[0])
        last = samples[-1]
        growth = [round(100.0 * (last[i] - base[i]) / base[i], 1) for i in (1, 2, 3)]
        print(json.dumps({"total": total, "growth_from_t=%ds_percent" % base[0]: growth, "verify": check,
                          "stale_reads": len(rec.stale_reads)}))
    finally:
        if not args.keep:
            subprocess.run([faults.STACK, "down"], check=False)


if __name__ == "__main__":
    asyncio.run(main())
