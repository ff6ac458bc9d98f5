#!/usr/bin/env python3
"""Fault matrix on the production-shaped stack (docs/reliability.md). Not run by CI.

    python3 scripts/faults.py [--rate 200] [--users 2000] [--only NAME,...] [--keep]

Brings the stack up (scripts/stack.sh up; refuses if one is already up) with the limits
high enough for the mix (profiles_read/profiles_update 1,000,000 per hour) and a small
batch limit for the rate-limit probe (profiles_batch = 20 per hour), seeds users, mints
their tokens with the stack's key, then for each fault:

  5 s of the mix (fixed rate through nginx) -> inject -> hold -> restore -> 20 s more,

while one admin caller hammers POST /api/profiles/batch at 10 req/s through nginx from
the start of the phase (so its 20 are used up before the fault) to the end. Afterwards every
user written so far is read through each instance directly and compared with the database.
Prints a JSON line per fault and a Markdown table; `down` at the end unless --keep.
"""

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = os.path.join(REPO, "scripts", "stack.sh")
S = loadgen.STACK_DIR
BATCH_LIMIT = 20


def sh(*args, check=True, env=None):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, env=env).stdout


async def ash(*args):
    p = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    if p.returncode != 0:
        print(f"[faults] {' '.join(args)} failed: {err.decode().strip()}", file=sys.stderr)
    return out.decode()


def log(msg):
    print(f"[faults] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def mint(ids, role):
    env = {k: v for k, v in os.environ.items() if k not in ("JWKS_URL", "JWT_PUBLIC_KEY_FILE")}
    env["USER_API__JWT__DEV_KEYS_DIR"] = f"{S}/keys"
    env["DATABASE_URL"] = f"sqlite://{S}/token-scratch.db"
    out = subprocess.run([f"{S}/bin/mint", "--role", role, "--ttl-secs", "10800"], input="\n".join(ids) + "\n",
                         check=True, capture_output=True, text=True, env=env).stdout
    return [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]


def redis_nodes(ports):
    nodes = []
    for i in range(1, 7):
        p = ports[f"REDIS_PORT_{i}"]
        role = sh("redis-cli", "-p", str(p), "role", check=False).split("\n")[0].strip()
        nodes.append((i, p, role))
    return nodes


async def wait_cluster_ok(ports, secs=60):
    end = time.time() + secs
    while time.time() < end:
        ok = True
        for i in range(1, 7):
            out = await ash("redis-cli", "-p", str(ports[f"REDIS_PORT_{i}"]), "cluster", "info")
            if "cluster_state:ok" not in out:
                ok = False
                break
        if ok:
            return True
        await asyncio.sleep(0.2)
    return False


# Each fault: async inject(ports) -> note, async restore(ports) -> note. Both may take time.
async def redis_master_kill(ports, ctx):
    i, p, _ = next(n for n in redis_nodes(ports) if n[2] == "master")
    pid = open(f"{S}/redis/{i}/redis.pid").read().strip()
    os.kill(int(pid), 9)
    ctx["node"] = i
    t = time.time()
    # Wait for a replica to take over the dead master's slots.
    while time.time() - t < 30:
        others = [n for n in redis_nodes(ports) if n[0] != i]
        info = await ash("redis-cli", "-p", str(others[0][1]), "cluster", "info")
        if "cluster_state:ok" in info and sum(1 for n in others if n[2] == "master") == 3:
            break
        await asyncio.sleep(0.1)
    ctx["failover_s"] = round(time.time() - t, 1)
    return f"SIGKILL redis-{i} (master :{p}); replica promoted after {ctx['failover_s']} s"


async def redis_master_kill_restore(ports, ctx):
    await ash(STACK, "start-redis", str(ctx["node"]))
    return f"redis-{ctx['node']} restarted (rejoins as a replica)"


async def redis_pause(ports, ctx):
    masters = [n for n in redis_nodes(ports) if n[2] == "master"]
    for _, p, _ in masters:
        await ash("redis-cli", "-p", str(p), "client", "pause", "5000", "ALL")
    await asyncio.sleep(5)
    return "CLIENT PAUSE 5000 ALL on the 3 masters"


async def nothing(ports, ctx):
    return ""


async def redis_restart_empty(ports, ctx):
    # "Restarted empty" for a cluster: every node (masters and replicas) stopped without
    # saving and started again with its nodes.conf, so the topology survives and the data
    # does not (the stack runs Redis without RDB/AOF).
    for i in range(1, 7):
        await ash("redis-cli", "-p", str(ports[f"REDIS_PORT_{i}"]), "shutdown", "nosave")
    await asyncio.sleep(0.5)
    for i in range(1, 7):
        await ash(STACK, "start-redis", str(i))
    ok = await wait_cluster_ok(ports)
    keys = sum(int(sh("redis-cli", "-p", str(ports[f"REDIS_PORT_{i}"]), "dbsize", check=False).strip() or 0)
               for i in range(1, 7))
    return f"all 6 nodes SHUTDOWN NOSAVE + restarted; cluster_state ok={ok}; keys right after: {keys}"


async def pg_restart(ports, ctx):
    await ash(STACK, "pg-restart")
    return "pg_ctl restart -m fast"


async def instance_kill(ports, ctx):
    await ash(STACK, "stop-instance", "2", "KILL")
    await asyncio.sleep(5)
    return "SIGKILL user-api-2, down 5 s"


async def instance_kill_restore(ports, ctx):
    await ash(STACK, "start-instance", "2")
    return "user-api-2 restarted"


async def instance_term(ports, ctx):
    t = time.time()
    await ash(STACK, "stop-instance", "3", "TERM")
    ctx["exit_s"] = round(time.time() - t, 1)
    await asyncio.sleep(5)
    return f"SIGTERM user-api-3 (exited after {ctx['exit_s']} s), down 5 s"


async def instance_term_restore(ports, ctx):
    await ash(STACK, "start-instance", "3")
    return "user-api-3 restarted"


async def jwks_down(ports, ctx):
    await ash(STACK, "stop-jwks")
    await asyncio.sleep(20)
    return "JWKS server stopped for 20 s"


async def jwks_restore(ports, ctx):
    await ash(STACK, "start-jwks")
    return "JWKS server restarted"


FAULTS = [
    ("redis-master-kill", "Redis master SIGKILL (replica takes over)", redis_master_kill, redis_master_kill_restore),
    ("redis-pause", "Redis CLIENT PAUSE 5 s, every master", redis_pause, nothing),
    ("redis-restart-empty", "Redis restarted empty (all 6 nodes)", redis_restart_empty, nothing),
    ("pg-restart", "PostgreSQL restarted", pg_restart, nothing),
    ("instance-kill", "one instance SIGKILL, restarted after 5 s", instance_kill, instance_kill_restore),
    ("instance-term", "one instance SIGTERM, restarted after 5 s", instance_term, instance_term_restore),
    ("jwks-down", "JWKS server down 20 s", jwks_down, jwks_restore),
]


async def hammer(port, token, body, stop, out):
    c = loadgen.Conn("127.0.0.1", port)
    hdrs = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    while not stop.is_set():
        t = time.time()
        st, h, _ = await c.request("POST", "/api/profiles/batch", hdrs, body, 5.0)
        out.append((t, st, h.get("x-upstream")))
        await asyncio.sleep(max(0.0, 0.1 - (time.time() - t)))
    await c.close()


async def run_fault(name, title, inject, restore, ports, users, admin, rate, pre=5.0, post=20.0):
    rec = loadgen.Recorder()
    stop = asyncio.Event()
    hammered = []
    body = json.dumps([users.ids[0]])
    mix = asyncio.create_task(loadgen.run_mix("127.0.0.1", ports["NGINX_PORT"], users, rec, rate, stop))
    ham = asyncio.create_task(hammer(ports["NGINX_PORT"], admin[1], body, stop, hammered))
    await asyncio.sleep(pre)
    ctx = {}
    t_inject = time.time()
    log(f"{name}: inject")
    note1 = await inject(ports, ctx)
    note2 = await restore(ports, ctx)
    t_restore = time.time()
    log(f"{name}: restored after {t_restore - t_inject:.1f} s ({note1}; {note2})")
    await asyncio.sleep(post)
    stop.set()
    await asyncio.gather(mix, ham)
    await asyncio.sleep(2)
    check = await loadgen.verify(users, ports)

    fails = [r for r in rec.records if r[0] >= t_inject and not (200 <= r[2] < 300)]
    last_fail_end = max((r[0] + r[1] for r in fails), default=None)
    recovery = round(last_fail_end - t_inject, 1) if last_fail_end else 0.0
    window_end = max(t_restore, last_fail_end or 0) + 1.0
    during = rec.between(t_inject, window_end)
    before = rec.between(0, t_inject)
    admitted_by_hour = Counter(datetime.datetime.utcfromtimestamp(t).strftime("%Y%m%d%H")
                               for t, st, _ in hammered if 200 <= st < 300)
    overshoot = sum(max(0, n - BATCH_LIMIT) for n in admitted_by_hour.values())
    all_s = loadgen.summarize(rec.records)
    res = {
        "fault": name, "title": title, "notes": f"{note1}; {note2}".strip("; "),
        "held_s": round(t_restore - t_inject, 1),
        "requests": all_s["requests"], "non2xx": all_s["non2xx"],
        "p99_before_ms": loadgen.summarize(before)["p99_ms"],
        "p99_during_ms": loadgen.summarize(during)["p99_ms"],
        "during_window_s": round(window_end - t_inject, 1),
        "recovery_s": recovery,
        "stale_reads": len(rec.stale_reads),
        "checked_users": check["checked"], "lost": check["lost"], "hidden": check["hidden"],
        "examples": check["examples"],
        "hammer": dict(Counter(str(st) for _, st, _ in hammered)),
        "hammer_admitted": sum(admitted_by_hour.values()), "overshoot": overshoot,
        # Where the admissions went, in order (t - inject, upstream): which instance let extra ones in.
        "admitted_at": [(round(t - t_inject, 2), up) for t, st, up in hammered if 200 <= st < 300][BATCH_LIMIT - 5:],
    }
    print(json.dumps(res), flush=True)
    return res


def table(results):
    rows = ["| fault | held (s) | requests | non-2xx by status | p99 before / during (ms) | recovery (s) "
            "| stale reads | lost / hidden writes (users checked) | rate-limit admitted (limit 20) / overshoot |",
            "| --- | ---: | ---: | --- | --- | ---: | ---: | --- | --- |"]
    for r in results:
        bad = ", ".join(f"{k}: {v}" for k, v in r["non2xx"].items()) or "none"
        rows.append(f"| {r['title']} | {r['held_s']} | {r['requests']} | {bad} | {r['p99_before_ms']} / "
                    f"{r['p99_during_ms']} | {r['recovery_s']} | {r['stale_reads']} | {r['lost']} / {r['hidden']} "
                    f"({r['checked_users']}) | {r['hammer_admitted']} / {r['overshoot']} |")
    return "\n".join(rows)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--only", default="")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    if os.path.exists(f"{S}/ports.env"):
        sys.exit(f"[faults] a stack is already up in {S}: scripts/stack.sh down first")
    env = dict(os.environ)
    env.update({"USER_API__RATE_LIMITS__PROFILES_READ": "1000000",
                "USER_API__RATE_LIMITS__PROFILES_UPDATE": "1000000",
                "USER_API__RATE_LIMITS__PROFILES_BATCH": str(BATCH_LIMIT)})
    log("scripts/stack.sh up")
    subprocess.run([STACK, "up"], check=True, env=env, stdout=subprocess.DEVNULL)
    try:
        ports = loadgen.read_ports()
        log(f"seeding {args.users} profiles")
        inst_env = dict(os.environ)
        for line in open(f"{S}/instance.env"):
            k, _, v = line.strip().partition("=")
            if k:
                inst_env[k] = v
        subprocess.run([f"{S}/bin/user-api", "seed", "--count", str(args.users)], check=True, env=inst_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ids = [r[0] for r in loadgen.psql(ports["PG_PORT"], f"SELECT user_id FROM profiles LIMIT {args.users}")]
        users = loadgen.Users(mint(ids, "user"))
        admins = mint([str(uuid.uuid4()) for _ in FAULTS], "admin")
        # Warm-up: 10 s of the mix (first logins, cache filling) before the first fault.
        log("warm-up 10 s")
        rec, stop = loadgen.Recorder(), asyncio.Event()
        t = asyncio.create_task(loadgen.run_mix("127.0.0.1", ports["NGINX_PORT"], users, rec, args.rate, stop))
        await asyncio.sleep(10)
        stop.set()
        await t
        log(f"warm-up: {loadgen.summarize(rec.records)}")
        only = set(filter(None, args.only.split(",")))
        results = []
        for k, (name, title, inject, restore) in enumerate(FAULTS):
            if only and name not in only:
                continue
            results.append(await run_fault(name, title, inject, restore, ports, users, admins[k], args.rate))
            await asyncio.sleep(3)
        print()
        print(table(results))
        with open(f"/tmp/user-api-faults-{time.strftime('%Y%m%d-%H%M%S')}.json", "w") as f:
            json.dump(results, f, indent=1)
    finally:
        if not args.keep:
            subprocess.run([STACK, "down"], check=False)


if __name__ == "__main__":
    asyncio.run(main())
