"""Fixed-rate load for the stack (scripts/stack.sh), shared by scripts/faults.py and scripts/soak.py.

The benchmark's mix (bench/wrk/mix.lua): 90 % GET of the caller's own profile, 10 % PUT of it
changing `first_name`, each request by the user it concerns, over many users. Unlike wrk it
runs open loop at a fixed rate (a request is due every 1/rate s; its latency counts from
when it was due, so a stall shows up as latency instead of as fewer requests), and it
remembers what was acknowledged:

- every PUT writes `first_name = "W<seq>"` with a global, increasing `seq`; a 2xx answer makes
  it the user's last acknowledged value; a PUT without an answer (timeout, reset, 502) may or
  may not have been applied, so the user's value may be that one or a later one;
- one request per user at a time (a busy user is skipped), so a user's writes are ordered;
- a 200 GET whose `first_name` is older than the last value acknowledged *before the GET was
  sent* is a stale read.

Pure asyncio with a small HTTP/1.1 client (keep-alive, Content-Length or chunked), so it
needs nothing beyond python3.
"""

import asyncio
import json
import os
import random
import subprocess
import time
from collections import Counter

# The same default and override as scripts/stack.sh.
STACK_DIR = os.environ.get("STACK_DIR", "/tmp/user-api-stack")


def read_ports(stack_dir=STACK_DIR):
    ports = {}
    with open(f"{stack_dir}/ports.env") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k:
                ports[k] = int(v)
    return ports


def seq_of(first_name):
    if isinstance(first_name, str) and first_name.startswith("W") and first_name[1:].isdigit():
        return int(first_name[1:])
    return -1


class Conn:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.r = self.w = None

    async def close(self):
        if self.w is not None:
            self.w.close()
            try:
                await self.w.wait_closed()
            except Exception:
                pass
        self.r = self.w = None

    async def request(self, method, path, headers, body=None, timeout=5.0):
        """(status, headers dict, body bytes); status 0 on a connection error or timeout."""
        try:
            return await asyncio.wait_for(self._request(method, path, headers, body), timeout)
        except (asyncio.TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            return 0, {}, b""

    async def _request(self, method, path, headers, body):
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        data = body.encode() if isinstance(body, str) else (body or b"")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if data or method in ("PUT", "POST", "PATCH"):
            lines.append(f"Content-Length: {len(data)}")
        self.w.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        status_line, *hlines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        hdrs = {}
        for h in hlines:
            if ":" in h:
                k, v = h.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            payload = await self.r.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            payload = b""
            while True:
                size = int((await self.r.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await self.r.readuntil(b"\r\n")
                    break
                payload += await self.r.readexactly(size)
                await self.r.readexactly(2)
        else:
            payload = b""
        if hdrs.get("connection", "").lower() == "close":
            await self.close()
        return status, hdrs, payload


class Users:
    """Users with tokens and what the load generator knows about their values."""

    def __init__(self, pairs):
        self.ids = [p[0] for p in pairs]
        self.tokens = {p[0]: p[1] for p in pairs}
        self.acked = {}          # user -> last acknowledged seq
        self.attempted = {}      # user -> highest seq sent (answered or not)
        self.busy = set()
        self.seq = 0             # last seq written (global, so values never repeat across runs)


def load_users(path, limit=None):
    pairs = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                pairs.append((parts[0], parts[1]))
                if limit and len(pairs) >= limit:
                    break
    return Users(pairs)


class Recorder:
    """Every request of the mix: (due time, latency s, status, kind)."""

    def __init__(self):
        self.records = []
        self.stale_reads = []

    def between(self, t0, t1):
        return [r for r in self.records if t0 <= r[0] < t1]


def percentile(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


async def run_mix(host, port, users, rec, rate, stop, conns=48, put_ratio=0.10, timeout=5.0):
    """Open-loop mix at `rate` req/s until the `stop` event is set."""
    q = asyncio.Queue()
    rng = random.Random(42)

    async def worker():
        c = Conn(host, port)
        while True:
            due = await q.get()
            if due is None:
                await c.close()
                return
            # A free user: random, skipping busy ones (one request per user at a time).
            for _ in range(20):
                u = rng.choice(users.ids)
                if u not in users.busy:
                    break
            else:
                continue
            users.busy.add(u)
            auth = {"Authorization": "Bearer " + users.tokens[u]}
            path = "/api/profiles/" + u
            try:
                if rng.random() < put_ratio:
                    users.seq += 1
                    s = users.seq
                    users.attempted[u] = s
                    st, _, _ = await c.request("PUT", path, {**auth, "Content-Type": "application/json"},
                                               json.dumps({"first_name": f"W{s}"}), timeout)
                    if 200 <= st < 300:
                        if s > users.acked.get(u, -1):
                            users.acked[u] = s
                    kind = "PUT"
                else:
                    before = users.acked.get(u, -1)
                    st, _, body = await c.request("GET", path, auth, None, timeout)
                    if st == 200:
                        try:
                            got = seq_of(json.loads(body)["profile"]["first_name"])
                        except Exception:
                            got = None
                        if got is not None and got < before:
                            rec.stale_reads.append((time.time(), u, got, before))
                    kind = "GET"
            finally:
                users.busy.discard(u)
            rec.records.append((due, time.time() - due, st, kind))

    workers = [asyncio.create_task(worker()) for _ in range(conns)]
    interval = 1.0 / rate
    next_due = time.time()
    while not stop.is_set():
        now = time.time()
        while next_due <= now:
            q.put_nowait(next_due)
            next_due += interval
        await asyncio.sleep(min(interval, max(0.0, next_due - time.time())))
    for _ in workers:
        q.put_nowait(None)
    await asyncio.gather(*workers)


def psql(pg_port, sql):
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-d", "userapi",
                          "-qAtF", "\t", "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


async def verify(users, ports, conns_per_instance=8):
    """Reads every written user through each instance directly and compares with the database.

    lost: the database holds a value older than the last acknowledged one.
    hidden: an instance answers a value different from the database's (a stale cache entry).
    """
    written = [u for u in users.ids if u in users.attempted]
    if not written:
        return {"checked": 0, "lost": 0, "hidden": 0, "examples": []}
    db = {}
    for chunk in range(0, len(written), 500):
        ids = ",".join(f"'{u}'" for u in written[chunk:chunk + 500])
        for uid, fn in psql(ports["PG_PORT"], f"SELECT user_id, first_name FROM profiles WHERE user_id IN ({ids})"):
            db[uid] = seq_of(fn)
    lost, hidden, examples = 0, 0, []
    for u in written:
        if db.get(u, -1) < users.acked.get(u, -1):
            lost += 1
            examples.append(("lost", u, db.get(u), users.acked.get(u)))
    for i in (1, 2, 3):
        port = ports[f"API_PORT_{i}"]
        pool = [Conn("127.0.0.1", port) for _ in range(conns_per_instance)]

        async def check(c, batch):
            nonlocal hidden
            for u in batch:
                st, _, body = await c.request("GET", "/api/profiles/" + u,
                                              {"Authorization": "Bearer " + users.tokens[u]}, None, 10.0)
                got = seq_of(json.loads(body)["profile"]["first_name"]) if st == 200 else None
                if got != db.get(u):
                    hidden += 1
                    examples.append((f"instance {i}", u, got, db.get(u), st))
            await c.close()

        await asyncio.gather(*(check(c, written[k::conns_per_instance]) for k, c in enumerate(pool)))
    return {"checked": len(written), "lost": lost, "hidden": hidden, "examples": examples[:5]}


def summarize(records):
    statuses = Counter(r[2] for r in records)
    bad = {str(k): v for k, v in sorted(statuses.items()) if not (200 <= k < 300)}
    return {
        "requests": len(records),
        "non2xx": bad,
        "p50_ms": round(percentile([r[1] for r in records], 50) * 1000, 1),
        "p99_ms": round(percentile([r[1] for r in records], 99) * 1000, 1),
    }
