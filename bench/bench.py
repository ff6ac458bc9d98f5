#!/usr/bin/env python3
"""The benchmark of docs/benchmarks.md, driven from bench/run.sh (which installs wrk and
builds the release binaries first). Python 3 standard library only.

It creates its own PostgreSQL database and starts its own redis-server on a free port
(both removed at the end), seeds profiles, mints one token per user (bench/mint.rs), then
runs every scenario with wrk (32 connections, 2 threads) and measures, around each one:
the server process's CPU (/proc/<pid>/stat), its peak RSS (VmHWM, reset before each
scenario), the commands Redis executed (INFO commandstats), the database queries the
service counted (/metrics db_queries_total) and the transactions PostgreSQL committed for
the bench database (pg_stat_database). The limits (bench/limits.rs and redis-benchmark)
run in the same process, so ratios are between figures of one run.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
# USER_API_BIN measures another build (e.g. the commit before a change) with the same harness.
BIN = os.environ.get("USER_API_BIN") or os.path.join(TARGET, "release/user-api")
MINT = os.path.join(TARGET, "release/examples/mint")
LIMITS = os.path.join(TARGET, "release/examples/limits")
WRK_DIR = os.path.join(ROOT, "bench/wrk")
CLK_TCK = os.sysconf("SC_CLK_TCK")  # what `getconf CLK_TCK` prints

CONNECTIONS = 32
THREADS = 2


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------- processes and /proc


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime (fields 14 and 15)


def reset_peak_rss(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Proc:
    """A child server process with its output in a log file."""

    def __init__(self, name, argv, env, logdir):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                  cwd=ROOT)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def wait_http(url, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout}s:\n{proc.tail()}")


# ---------------------------------------------------------------- Redis (RESP over a socket)


class Redis:
    """The benchmark's own redis-server on a free port: never the shared one."""

    def __init__(self, logdir):
        self.port = free_port()
        self.proc = Proc("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                         os.environ.copy(), logdir)
        self.url = f"redis://127.0.0.1:{self.port}"
        deadline = time.time() + 10
        while True:
            try:
                if self.cmd("PING") == "PONG":
                    break
            except OSError:
                pass
            if time.time() > deadline or not self.proc.alive():
                raise RuntimeError("redis-server did not start:\n" + self.proc.tail())
            time.sleep(0.05)

    def cmd(self, *args):
        payload = f"*{len(args)}\r\n".encode()
        for a in args:
            b = str(a).encode()
            payload += b"$%d\r\n%s\r\n" % (len(b), b)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(payload)
            f = s.makefile("rb")
            line = f.readline()
            kind, rest = line[:1], line[1:].strip()
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            raise RuntimeError(f"unexpected reply {line!r}")

    def info(self):
        """One INFO call (it shows up in commandstats as `info`, which is left out)."""
        text = self.cmd("INFO", "commandstats", "cpu")
        calls, cpu = {}, 0.0
        for line in text.splitlines():
            m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
            if m:
                calls[m.group(1)] = int(m.group(2))
            elif line.startswith(("used_cpu_sys:", "used_cpu_user:")):
                cpu += float(line.split(":")[1])
        calls.pop("info", None)
        return calls, cpu

    def flushall(self):
        self.cmd("FLUSHALL")  # our own throwaway server (see __init__), never the shared one


# ---------------------------------------------------------------- PostgreSQL


class Pg:
    def __init__(self, admin_url):
        self.admin = admin_url
        self.db = f"user_api_bench_{os.getpid()}"
        parts = urllib.parse.urlsplit(admin_url)
        self.url = urllib.parse.urlunsplit(parts._replace(path="/" + self.db))
        self.created = False

    def q(self, sql, url=None):
        return sh(["psql", url or self.admin, "-Atqc", sql]).strip()

    def create(self):
        self.q(f"CREATE DATABASE {self.db}")
        self.created = True

    def drop(self):
        if self.created:
            subprocess.run(["psql", self.admin, "-qc", f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"],
                           capture_output=True)
            self.created = False

    def xacts(self):
        # Cumulative stats are flushed by each backend when it goes idle, at most once a
        # second: figures lag by up to about a second at each end of a window.
        v = self.q(f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{self.db}'")
        return int(v or 0)

    def active(self):
        v = self.q(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.db}' AND state <> 'idle'")
        return int(v or 0)

    def version(self):
        return self.q("SHOW server_version")


# ---------------------------------------------------------------- the service


def scrape(port):
    """Counters from the service's /metrics: db_queries_total by op, cache hits/misses."""
    out = {"db": {}, "hits": 0.0, "misses": 0.0, "redis_errors": 0.0}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("db_queries_total"):
            m = re.match(r'db_queries_total\{.*op="([^"]+)".*\}\s+(\S+)', line)
            if m:
                out["db"][m.group(1)] = out["db"].get(m.group(1), 0.0) + float(m.group(2))
        elif re.match(r"cache_hits_total(\{.*\})?\s", line):
            out["hits"] += float(line.split()[-1])
        elif re.match(r"cache_misses_total(\{.*\})?\s", line):
            out["misses"] += float(line.split()[-1])
        elif re.match(r"redis_errors_total(\{.*\})?\s", line):
            out["redis_errors"] += float(line.split()[-1])
    return out


class Bench:
    def __init__(self, opts):
        self.o = opts
        self.work = tempfile.mkdtemp(prefix="user-api-bench.")
        self.pg = Pg(os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres")
        self.redis = None
        self.procs = []
        self.rows = []
        self.started = datetime.datetime.now(datetime.timezone.utc)

    # -- environment

    def env(self, **extra):
        e = os.environ.copy()
        e.update({
            "DATABASE_URL": self.pg.url,
            "REDIS_URL": self.redis.url,
            "USER_API__JWT__DEV_KEYS_DIR": os.path.join(self.work, "keys"),
            # Everything else as deployed (default logging: the `Request completed` line at
            # info, JSON to a file). Limits out of the way (this measures the service, not
            # the limiter's verdicts); the limiter still counts every request.
            "USER_API__RATE_LIMITS__PROFILES_READ": "1000000000",
            "USER_API__RATE_LIMITS__PROFILES_UPDATE": "1000000000",
            "USER_API__RATE_LIMITS__PROFILES_BATCH": "1000000000",
            "USER_API__RATE_LIMITS__DEFAULT": "1000000000",
            "PREWARM": "0",
            # Dev keys on a real (throwaway) PostgreSQL database: meant, so say so.
            "USER_API_DEV_MODE": "1",
        })
        for k in ("JWT_PUBLIC_KEY_FILE", "JWKS_URL", "JWT_ISS", "JWT_AUD", "REDIS_CLUSTER_URLS",
                  "USER_API_CONFIG"):
            e.pop(k, None)
        e.update(extra)
        return e

    def start_service(self, name, **extra):
        port = free_port()
        p = Proc(name, [BIN, "serve"], self.env(USER_API_ADDR=f"127.0.0.1:{port}", **extra), self.work)
        self.procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/health", p)
        p.port = port
        return p

    def start_limits(self):
        port = free_port()
        p = Proc("limits", [LIMITS, f"127.0.0.1:{port}"], self.env(), self.work)
        self.procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/bare/x", p)
        p.port = port
        return p

    def stop(self, p):
        p.stop()
        if p in self.procs:
            self.procs.remove(p)

    def cleanup(self):
        for p in list(self.procs):
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        if self.redis:
            self.redis.proc.stop()
        self.pg.drop()
        if not self.o.keep:
            subprocess.run(["rm", "-rf", self.work])

    # -- wrk

    def wrk(self, script, port, args, secs=None, once=False):
        """Runs wrk; returns (BENCH_RESULT dict, wrk's CPU seconds). `once` scripts end
        when every thread reported BENCH_THREAD_DONE (or at the cap)."""
        cap = secs if not once else self.o.once_cap
        argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{cap}s", "--timeout", "10s", "--latency",
                "-s", os.path.join(WRK_DIR, script), f"http://127.0.0.1:{port}", "--",
                f"threads={THREADS}"] + [f"{k}={v}" for k, v in args.items()]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        done_threads, lines, result = 0, [], None
        for line in p.stdout:
            lines.append(line)
            if line.startswith("BENCH_THREAD_DONE"):
                done_threads += 1
                if done_threads == THREADS:
                    p.send_signal(signal.SIGINT)  # wrk's main sleeps for -d; this wakes it
            elif line.startswith("BENCH_RESULT "):
                result = json.loads(line.split(" ", 1)[1])
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        with open(os.path.join(self.work, "wrk.log"), "a") as f:
            f.write(f"$ {' '.join(argv)}\n{''.join(lines)}\n")
        if result is None:
            raise RuntimeError(f"wrk gave no result:\n{''.join(lines[-20:])}")
        if once and done_threads < THREADS:
            result["incomplete"] = True
            log(f"{script}: not every thread finished within {cap}s (see the requests count)")
        return result, usage.ru_utime + usage.ru_stime

    # -- measurement

    def snapshot(self, server, metrics_port):
        calls, rcpu = self.redis.info()
        return {
            "t": time.time(),
            "cpu": cpu_ticks(server.pid) if server else 0,
            "redis_calls": calls,
            "redis_cpu": rcpu,
            "xacts": self.pg.xacts(),
            "metrics": scrape(metrics_port) if metrics_port else None,
        }

    def measure(self, sid, name, server, run, metrics_port=None, notes=""):
        """Runs `run()` (-> wrk result, loadgen CPU s) between two snapshots; adds a row."""
        if server:
            reset_peak_rss(server.pid)
        load1 = os.getloadavg()[0]  # other work on the machine shows here
        a = self.snapshot(server, metrics_port)
        res, loadgen_cpu = run()
        b = self.snapshot(server, metrics_port)
        n = max(res["requests"], 1)
        dur = res["duration_us"] / 1e6
        calls = {k: v - a["redis_calls"].get(k, 0) for k, v in b["redis_calls"].items()}
        calls = {k: v for k, v in calls.items() if v / n >= 0.0005}
        row = {
            "id": sid,
            "scenario": name,
            "kind": "scenario",
            "requests": res["requests"],
            "duration_s": round(dur, 3),
            "rps": round(res["requests"] / dur, 1) if dur > 0 else 0.0,
            "p50_ms": res["latency_us"]["p50"] / 1000,
            "p90_ms": res["latency_us"]["p90"] / 1000,
            "p99_ms": res["latency_us"]["p99"] / 1000,
            "p999_ms": res["latency_us"]["p999"] / 1000,
            "max_ms": res["latency_us"]["max"] / 1000,
            "non2xx": res["non2xx"],
            "bytes_per_response": round(res["bytes"] / n),  # status line and headers included
            "socket_errors": res["socket_errors"],
            "incomplete": res.get("incomplete", False),
            "cpu_us_per_req": round((b["cpu"] - a["cpu"]) / CLK_TCK * 1e6 / n, 1) if server else None,
            "peak_rss_mib": round(peak_rss_kib(server.pid) / 1024, 1) if server else None,
            "redis_cmds_per_req": round(sum(calls.values()) / n, 3),
            "redis_cmds_by_command": {k: round(v / n, 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
            "redis_cpu_us_per_req": round((b["redis_cpu"] - a["redis_cpu"]) * 1e6 / n, 1),
            "pg_xacts_per_req": round((b["xacts"] - a["xacts"]) / n, 3),
            "loadgen_cpu_us_per_req": round(loadgen_cpu * 1e6 / n, 1),
            "load_avg_1m_before": round(load1, 2),
            "notes": notes,
        }
        if a["metrics"] is not None:
            ma, mb = a["metrics"], b["metrics"]
            db = {k: v - ma["db"].get(k, 0.0) for k, v in mb["db"].items()}
            db = {k: v for k, v in db.items() if v / n >= 0.0005}
            row["db_queries_per_req"] = round(sum(db.values()) / n, 3)
            row["db_queries_by_op"] = {k: round(v / n, 3) for k, v in sorted(db.items(), key=lambda kv: -kv[1])}
            hits, misses = mb["hits"] - ma["hits"], mb["misses"] - ma["misses"]
            row["cache_hit_pct"] = round(100 * hits / (hits + misses), 1) if hits + misses else None
            row["redis_errors"] = int(mb["redis_errors"] - ma["redis_errors"])
        else:
            row["db_queries_per_req"] = None
            row["db_queries_by_op"] = {}
            row["cache_hit_pct"] = None
            row["redis_errors"] = None
        self.rows.append(row)
        log(f"{sid}: {row['rps']:.0f} req/s, p99 {row['p99_ms']:.2f} ms, non-2xx {row['non2xx']}")
        return row

    def drain(self, limit=60):
        """Waits until the bench database has had no running statement for 0.5 s; returns
        the seconds waited (the backlog of background writes, e.g. login recording)."""
        t0, quiet_since = time.time(), None
        while time.time() - t0 < limit:
            now = time.time()
            if self.pg.active() == 0:
                quiet_since = quiet_since or now
                if now - quiet_since >= 0.5:
                    break
            else:
                quiet_since = None
            time.sleep(0.1)
        return round((quiet_since or time.time()) - t0, 1)

    # -- the run

    def machine(self):
        model = "unknown"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
        return {
            "cores": os.cpu_count(),
            "cpu": model,
            "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": f"{platform.system()} {platform.release()}",
            "load_avg_at_start": os.getloadavg(),
            "clk_tck": CLK_TCK,
            "wrk": first_line(["wrk", "-v"]).split(" Copyright")[0],
            "redis": first_line(["redis-server", "--version"]),
            "postgresql": self.pg.version(),
            "rustc": first_line(["rustc", "--version"]),
        }

    def git(self):
        def g(*a):
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return {"commit": g("rev-parse", "--short", "HEAD"), "branch": g("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(g("status", "--porcelain", "--untracked-files=no"))}

    def run(self):
        o = self.o
        self.pg.create()
        self.redis = Redis(self.work)
        info = {"machine": self.machine(), "git": self.git()}
        m = info["machine"]
        print("## machine")
        print(f"- {m['cores']} cores: {m['cpu']}; {m['memory_gib']} GiB memory; {m['kernel']}")
        print(f"- load average at start {' '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}")
        print(f"- {m['wrk']}; {m['redis']}; PostgreSQL {m['postgresql']}; {m['rustc']}")
        print(f"- commit {info['git']['commit']} ({info['git']['branch']}{', with local changes' if info['git']['dirty'] else ''})")
        print(f"- {o.profiles} profiles, hot set {o.hot}, {o.secs} s per timed scenario, "
              f"wrk {THREADS} threads / {CONNECTIONS} connections", flush=True)

        log(f"seeding {o.profiles} profiles into {self.pg.db}")
        sh([BIN, "seed", "--count", str(o.profiles)], env=self.env())
        ids_path = os.path.join(self.work, "ids")
        users = os.path.join(self.work, "users")
        admin = os.path.join(self.work, "admin")
        with open(ids_path, "w") as f:
            f.write(self.pg.q("SELECT user_id FROM profiles ORDER BY random()", self.pg.url) + "\n")
        t0 = time.time()
        with open(ids_path) as i, open(users, "w") as out:
            subprocess.run([MINT], stdin=i, stdout=out, env=self.env(), check=True)
        log(f"minted {o.profiles} user tokens in {time.time() - t0:.1f}s")
        with open(admin, "w") as out:
            subprocess.run([MINT, "--role", "admin"], input=str(uuid.uuid4()) + "\n", stdout=out,
                           env=self.env(), check=True, text=True)
        n_users = o.profiles
        follow = min(1000, n_users)

        # (a) cached GET, then the limits, then (c) and (d), on one instance.
        svc = self.start_service("steady")
        # Warm the hot set: the first pass fills the cache and records each user's login,
        # and recording a login invalidates the entry; the second pass fills it again.
        self.wrk("once.lua", svc.port, {"users": users, "count": o.hot}, once=True)
        self.drain()
        self.wrk("once.lua", svc.port, {"users": users, "count": o.hot}, once=True)
        self.measure("a", f"(a) GET cached, hot set of {o.hot}", svc,
                     lambda: self.wrk("get.lua", svc.port, {"users": users, "count": o.hot}, o.secs),
                     svc.port)
        if o.profile:
            return self.profile_only(svc, users)

        lim = self.start_limits()
        bare = self.measure("bare", "limit: bare axum handler, ~500 B JSON", lim,
                            lambda: self.wrk("get.lua", lim.port, {"users": users, "count": o.hot,
                                                                   "prefix": "/bare/"}, o.secs))
        bare["kind"] = "limit"
        rget = self.measure("redis_get", "limit: one Redis GET per request", lim,
                            lambda: self.wrk("get.lua", lim.port, {"users": users, "count": o.hot,
                                                                   "prefix": "/redis/"}, o.secs))
        rget["kind"] = "limit"
        self.stop(lim)
        self.redis_benchmark()

        self.measure("c", f"(c) 90/10 GET/PUT, hot set of {o.hot}", svc,
                     lambda: self.wrk("mix.lua", svc.port, {"users": users, "count": o.hot}, o.secs),
                     svc.port)
        self.measure("d", f"(d) POST batch of 50 (admin), hot set of {o.hot}", svc,
                     lambda: self.wrk("batch.lua", svc.port, {"users": users, "count": o.hot,
                                                              "admin": admin, "size": 50}, o.secs),
                     svc.port)
        self.stop(svc)

        # (b) and (e): every user's first request of the hour on a fresh instance, cold cache.
        self.first_requests("b", f"(b) GET uncached, {n_users} users once each (first request of the hour)",
                            users, n_users, follow, {})
        self.first_requests("e16", f"(e) login storm, {n_users} users, default pool",
                            users, n_users, follow, {})
        self.first_requests("e4", f"(e) login storm, {n_users} users, pool of 4",
                            users, n_users, follow, {"USER_API__DATABASE__MAX_CONNECTIONS": "4"})

        for r in self.rows:
            if r["kind"] == "scenario" and r["rps"]:
                r["ratio_to_bare"] = round(r["rps"] / bare["rps"], 3) if bare["rps"] else None
                r["ratio_to_redis_get"] = round(r["rps"] / rget["rps"], 3) if rget["rps"] else None
        return info

    def first_requests(self, sid, name, users, n, follow, extra_env):
        # Every recorded login older than an hour, and an empty cache: each user's request
        # is a miss and a first login, as on a fresh instance on Monday morning.
        self.pg.q("UPDATE profiles SET last_login = now() - interval '2 hours' "
                  "WHERE last_login > now() - interval '2 hours'", self.pg.url)
        self.redis.flushall()
        svc = self.start_service(sid, **extra_env)
        walk = self.measure(sid, name, svc,
                            lambda: self.wrk("once.lua", svc.port, {"users": users, "count": n}, once=True),
                            svc.port)
        after = self.measure(sid + "_after", f"{name.split(',')[0]}: then {follow} GETs right after", svc,
                             lambda: self.wrk("once.lua", svc.port, {"users": users, "count": follow},
                                              once=True),
                             svc.port)
        after["drain_s"] = self.drain()
        logins = scrape(svc.port)["db"].get("record_logins", 0)
        walk["logins_recorded_total"] = int(logins)
        self.stop(svc)

    def redis_benchmark(self):
        n = self.o.redis_requests
        calls_a, cpu_a = self.redis.info()
        t0 = time.time()
        out = sh(["redis-benchmark", "-p", str(self.redis.port), "-t", "get", "-n", str(n), "-c", "32", "--csv"])
        dur = time.time() - t0
        calls_b, cpu_b = self.redis.info()
        rows = [r for r in out.splitlines() if r.startswith('"GET"')]
        if not rows:
            raise RuntimeError("redis-benchmark gave no GET line:\n" + out)
        f = [x.strip('"') for x in rows[0].split(",")]
        # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        row = {
            "id": "redis_benchmark", "scenario": f"limit: redis-benchmark -t get -n {n} -c 32", "kind": "limit",
            "requests": n, "duration_s": round(dur, 3), "rps": float(f[1]),
            "p50_ms": float(f[4]), "p90_ms": None, "p99_ms": float(f[6]), "p999_ms": None, "max_ms": float(f[7]),
            "non2xx": None, "cpu_us_per_req": round((cpu_b - cpu_a) * 1e6 / n, 2),
            "redis_cmds_per_req": round(sum(calls_b.get(k, 0) - calls_a.get(k, 0) for k in calls_b) / n, 3),
            "redis_cmds_by_command": {}, "db_queries_per_req": None, "peak_rss_mib": None,
            "notes": "cpu_us_per_req is redis-server's CPU",
        }
        self.rows.append(row)
        log(f"redis-benchmark: {row['rps']:.0f} GET/s")

    def profile_only(self, svc, users):
        """bench/profile.sh: perf record of the service during scenario (a)."""
        data = os.path.join(self.o.perf_dir, "perf.data")
        log(f"perf record -e cpu-clock -g -p {svc.pid} for {self.o.secs}s -> {data}")
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-p", str(svc.pid), "-o", data,
                                 "--", "sleep", str(self.o.secs)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        self.measure("a_perf", "(a) GET cached, under perf record", svc,
                     lambda: self.wrk("get.lua", svc.port, {"users": users, "count": self.o.hot}, self.o.secs),
                     svc.port)
        _, err = perf.communicate()
        if perf.returncode != 0:
            raise RuntimeError(f"perf record failed:\n{err}")
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
                                 "--percent-limit", "0.5"],
                                capture_output=True, text=True)
        lines = [ln.rstrip() for ln in report.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        print(f"\n## perf report --no-children (top {self.o.perf_top}), {self.o.secs}s of scenario (a)\n")
        print("```")
        print("\n".join(lines[: self.o.perf_top]))
        print("```")
        print(f"\nperf data kept in {data}: `perf report -i {data} --no-children`")
        return None


# ---------------------------------------------------------------- output


def fmt(v, spec=".2f", none="–"):
    if v is None:
        return none
    return format(v, spec)


def print_tables(rows):
    print("\n## results\n")
    print("| scenario | requests | req/s | p50 ms | p99 ms | non-2xx | × bare HTTP | × one Redis GET | "
          "CPU µs/req | Redis cmds/req | DB queries/req | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['scenario']} | {r['requests']} | {r['rps']:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
              f"{fmt(r['non2xx'], 'd')}{' (incomplete)' if r.get('incomplete') else ''} | "
              f"{fmt(r.get('ratio_to_bare'))} | {fmt(r.get('ratio_to_redis_get'))} | "
              f"{fmt(r['cpu_us_per_req'], '.0f')} | {fmt(r['redis_cmds_per_req'])} | "
              f"{fmt(r['db_queries_per_req'])} | {fmt(r['peak_rss_mib'], '.0f')} |")
    print("\n| scenario | cache hit % | Redis errors | Redis commands per request | DB queries per request (service count) | "
          "PG xacts/req | Redis CPU µs/req | wrk CPU µs/req |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        if r["id"] == "redis_benchmark":
            continue
        cmds = ", ".join(f"{k} {v:g}" for k, v in list(r["redis_cmds_by_command"].items())[:6]) or "–"
        dbq = ", ".join(f"{k} {v:g}" for k, v in r.get("db_queries_by_op", {}).items()) or "–"
        extra = ""
        if "drain_s" in r:
            extra = f" (DB busy {r['drain_s']} s after)"
        if "logins_recorded_total" in r:
            extra = f" ({r['logins_recorded_total']} login batch statements)"
        print(f"| {r['scenario']} | {fmt(r.get('cache_hit_pct'), '.1f')} | {fmt(r.get('redis_errors'), 'd')} | {cmds} | {dbq}{extra} | "
              f"{fmt(r['pg_xacts_per_req'])} | {fmt(r['redis_cpu_us_per_req'], '.1f')} | "
              f"{fmt(r['loadgen_cpu_us_per_req'], '.0f')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 profiles, 3 s per scenario: checks the harness")
    ap.add_argument("--profiles", type=int)
    ap.add_argument("--secs", type=int)
    ap.add_argument("--hot", type=int)
    ap.add_argument("--profile", action="store_true", help="perf record during (a) only (bench/profile.sh)")
    ap.add_argument("--perf-top", type=int, default=40)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, users file)")
    ap.add_argument("--out", help="results JSON (default bench/results/<UTC timestamp>.json)")
    o = ap.parse_args()
    o.profiles = o.profiles or (1000 if o.quick else 10000)
    o.secs = o.secs or (3 if o.quick else 15)
    o.hot = min(o.hot or 1000, o.profiles)
    o.redis_requests = 20000 if o.quick else 200000
    o.once_cap = 120 if o.quick else 600
    if o.profiles < THREADS:
        ap.error("--profiles must be at least the number of wrk threads")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    o.perf_dir = os.path.join(ROOT, "bench/results", f"perf-{stamp}")
    if o.profile:
        os.makedirs(o.perf_dir, exist_ok=True)

    b = Bench(o)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        info = b.run()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        b.cleanup()
        return 130
    except Exception:
        b.cleanup()
        raise
    b.cleanup()
    if info is None:  # --profile
        print_tables(b.rows)
        return 0
    print_tables(b.rows)
    load_end = os.getloadavg()
    loads = ", ".join(f"{r['id']} {r['load_avg_1m_before']}" for r in b.rows if "load_avg_1m_before" in r)
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in load_end)}; "
          f"1-minute load average before each scenario: {loads}")
    info["machine"]["load_avg_at_end"] = load_end
    result = {
        "date": b.started.isoformat(timespec="seconds"),
        "command": " ".join(["bench/run.sh"] + sys.argv[1:]),
        **info,
        "config": {"profiles": o.profiles, "hot_set": o.hot, "secs_per_scenario": o.secs,
                   "wrk_threads": THREADS, "wrk_connections": CONNECTIONS},
        "what_is_counted": {
            "cpu_us_per_req": "utime+stime of the server process (/proc/<pid>/stat, CLK_TCK ticks) over the "
                              "window / requests; for limit rows the bench/limits.rs process, for redis-benchmark "
                              "redis-server",
            "redis_cmds_per_req": "every command Redis executed (INFO commandstats deltas, INFO itself left out) / "
                                  "requests, including the commands run inside Lua scripts (the limiter's EVALSHA "
                                  "runs INCR and PTTL) and each command of a pipeline; a pipeline is one round trip",
            "db_queries_per_req": "the service's own db_queries_total (/metrics) delta / requests; the outbox "
                                  "row clean-up and the outbox drain are not in it",
            "pg_xacts_per_req": "pg_stat_database xact_commit+xact_rollback delta of the bench database / "
                                "requests (flushed by backends about once a second: windows lag by up to ~1 s)",
            "peak_rss_mib": "VmHWM of the server process, reset (clear_refs 5) before each scenario",
            "non2xx": "wrk's count of statuses >= 400 for timed scenarios; every non-2xx for the one-shot ones",
        },
        "rows": b.rows,
    }
    out = o.out or os.path.join(ROOT, "bench/results", f"{stamp}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    svg = os.path.splitext(out)[0] + ".svg"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench/chart.py"), out, svg], check=True)
    print(f"\nresults: {os.path.relpath(out, ROOT)}, chart: {os.path.relpath(svg, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
