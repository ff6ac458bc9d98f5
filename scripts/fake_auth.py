#!/usr/bin/env python3
"""A fake of the stack's auth service, for scripts/stack.sh and docs/stack.md.

It does to Redis what the auth service does (SPEC 7), so that the profile service can be
watched reacting to it; it serves no HTTP. Python 3 standard library only: a minimal RESP
client over a socket (following a Redis Cluster's MOVED/ASK redirections) and `openssl dgst`
to sign the RS256 tokens with the stack's key.

  create ID [--username U] [--email E]   PUBLISH user:created {"user_id","username","email","timestamp"}
  update ID [--email E] [--field F ...]  PUBLISH user:updated {"user_id","updated_fields",["email",]"timestamp"}
  login ID [--role user|admin] [--ttl S] mint an access token with a jti; prints TOKEN=... JTI=... (eval-able)
  logout TOKEN                           SET blacklist:<jti> EX <the token's remaining life>
                                         (blacklist:<first 50 characters> for a token without jti)
  deactivate ID                          SET blacklist:user:<id> (no TTL), then PUBLISH user:deactivated {"user_id"}
  reactivate ID                          DEL blacklist:user:<id>
  listen [CHANNEL ...] [--count N] [--timeout S]
                                         SUBSCRIBE (default profile:updated profile:deleted) and print
                                         one line per message: <channel> <payload>

By default it talks to the stack in $STACK_DIR (default /tmp/user-api-stack): the first
Redis node of ports.env and keys/private.pem (kid "dev"). --redis HOST:PORT and --key PEM
point it elsewhere (a compose stack's Redis, another key).
"""

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

DEFAULT_STACK_DIR = "/tmp/user-api-stack"


class RedisError(Exception):
    pass


class Redis:
    """One RESP2 connection; commands follow a cluster's MOVED and ASK replies."""

    def __init__(self, host, port, timeout=5.0):
        self.seed = self.addr = (host, port)
        self.timeout = timeout
        self.sock = None
        self.rd = None

    def _connect(self, addr):
        self.close()
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=self.timeout)
        self.rd = self.sock.makefile("rb")

    def close(self):
        if self.sock is not None:
            self.rd.close()
            self.sock.close()
        self.sock = self.rd = None

    def to_seed(self):
        """Back to the node it was opened on, after a redirection took it elsewhere."""
        if self.addr != self.seed:
            self.close()
            self.addr = self.seed

    def send(self, *args):
        if self.sock is None:
            self._connect(self.addr)
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))

    def read(self):
        line = self.rd.readline()
        if not line:
            raise RedisError(f"connection to {self.addr[0]}:{self.addr[1]} closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rd.read(n + 2)[:-2]
            return data.decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RedisError(f"unexpected reply {line!r}")

    def call(self, *args):
        asking = False
        for _ in range(5):
            if asking:
                self.send("ASKING")
                self.read()
            self.send(*args)
            reply = self.read()
            if not isinstance(reply, RedisError):
                return reply
            words = str(reply).split()
            if words[0] in ("MOVED", "ASK") and len(words) == 3:
                host, _, port = words[2].rpartition(":")
                self._connect((host or self.addr[0], int(port)))
                asking = words[0] == "ASK"
                continue
            raise reply
        raise RedisError(f"too many redirections for {args[0]}")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_rs256(key_pem, kid, claims):
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key_pem],
        input=signing_input.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return f"{signing_input}.{b64url(sig)}"


def now_iso():
    return datetime.now(timezone.utc).isoformat()


def user_id(text):
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text}")


def publish(r, channel, payload):
    body = json.dumps(payload)
    # A cluster broadcasts a PUBLISH to every node, but counts only the subscribers of the
    # node it was sent to: always the first one, where the instances subscribe first.
    r.to_seed()
    receivers = r.call("PUBLISH", channel, body)
    host, port = r.addr
    print(f"PUBLISH {channel} {body} -> {receivers} subscriber(s) on {host}:{port}")


def cmd_create(r, a):
    payload = {
        "user_id": a.id,
        "username": a.username or f"user-{a.id[:8]}",
        "email": a.email if a.email is not None else f"user-{a.id[:8]}@example.com",
        "timestamp": now_iso(),
    }
    publish(r, "user:created", payload)


def cmd_update(r, a):
    fields = list(a.field or [])
    if a.email is not None and "email" not in fields:
        fields.append("email")
    if not fields:
        sys.exit("fake_auth update: give --email and/or --field NAME")
    payload = {"user_id": a.id, "updated_fields": fields}
    if a.email is not None:
        payload["email"] = a.email
    payload["timestamp"] = now_iso()
    publish(r, "user:updated", payload)


def cmd_login(_r, a):
    now = int(time.time())
    jti = str(uuid.uuid4())
    claims = {
        "sub": a.id,
        "role": a.role,
        "iat": now,
        "exp": now + a.ttl,
        "token_type": "access",
        "jti": jti,
    }
    print(f"TOKEN={sign_rs256(a.key, a.kid, claims)}")
    print(f"JTI={jti}")


def cmd_logout(r, a):
    parts = a.token.split(".")
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except (IndexError, ValueError):
        sys.exit("fake_auth logout: not a JWT")
    jti = claims.get("jti")
    key = f"blacklist:{jti}" if jti else f"blacklist:{a.token[:50]}"
    ttl = int(claims.get("exp", 0)) - int(time.time())
    if ttl <= 0:
        print(f"the token has expired; nothing to write ({key})")
        return
    r.call("SET", key, "1", "EX", ttl)
    print(f"SET {key} 1 EX {ttl}")


def cmd_deactivate(r, a):
    key = f"blacklist:user:{a.id}"
    r.call("SET", key, "1")
    print(f"SET {key} 1 (no TTL)")
    publish(r, "user:deactivated", {"user_id": a.id})


def cmd_reactivate(r, a):
    key = f"blacklist:user:{a.id}"
    print(f"DEL {key} -> {r.call('DEL', key)}")


def cmd_listen(r, a):
    channels = a.channels or ["profile:updated", "profile:deleted"]
    r.send("SUBSCRIBE", *channels)
    for _ in channels:
        r.read()
    # A subscribed connection waits as long as it must, up to --timeout.
    r.sock.settimeout(a.timeout)
    print(f"listening on {' '.join(channels)}", file=sys.stderr, flush=True)
    seen = 0
    try:
        while a.count is None or seen < a.count:
            msg = r.read()
            if isinstance(msg, list) and len(msg) == 3 and msg[0] == "message":
                print(f"{msg[1]} {msg[2]}", flush=True)
                seen += 1
    except (socket.timeout, KeyboardInterrupt):
        pass


def main():
    p = argparse.ArgumentParser(
        prog="fake_auth.py",
        description="A fake of the stack's auth service: events, tokens with a jti, blacklist keys.",
    )
    p.add_argument("--stack-dir", default=os.environ.get("STACK_DIR", DEFAULT_STACK_DIR))
    p.add_argument("--redis", help="HOST:PORT of a Redis node (default: the stack's first node)")
    p.add_argument("--key", help="RSA private key PEM (default: the stack's keys/private.pem)")
    p.add_argument("--kid", default="dev", help="the kid the JWKS serves the key under")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("create", help="PUBLISH user:created")
    s.add_argument("id", type=user_id)
    s.add_argument("--username")
    s.add_argument("--email")
    s = sub.add_parser("update", help="PUBLISH user:updated")
    s.add_argument("id", type=user_id)
    s.add_argument("--email")
    s.add_argument("--field", action="append", help="another updated field name (repeatable)")
    s = sub.add_parser("login", help="mint an access token with a jti")
    s.add_argument("id", type=user_id)
    s.add_argument("--role", choices=["user", "admin"], default="user")
    s.add_argument("--ttl", type=int, default=900, help="lifetime in seconds (default 900)")
    s = sub.add_parser("logout", help="SET blacklist:<jti> for the token's remaining life")
    s.add_argument("token")
    s = sub.add_parser("deactivate", help="SET blacklist:user:<id>, PUBLISH user:deactivated")
    s.add_argument("id", type=user_id)
    s = sub.add_parser("reactivate", help="DEL blacklist:user:<id>")
    s.add_argument("id", type=user_id)
    s = sub.add_parser("listen", help="SUBSCRIBE and print each message")
    s.add_argument("channels", nargs="*")
    s.add_argument("--count", type=int, help="exit after N messages")
    s.add_argument("--timeout", type=float, help="exit after S seconds without a message")
    a = p.parse_args()

    if a.key is None:
        a.key = os.path.join(a.stack_dir, "keys", "private.pem")
    if a.redis:
        host, _, port = a.redis.rpartition(":")
        addr = (host or "127.0.0.1", int(port))
    else:
        ports_env = os.path.join(a.stack_dir, "ports.env")
        try:
            with open(ports_env) as f:
                ports = dict(line.strip().split("=", 1) for line in f if "=" in line)
        except FileNotFoundError:
            sys.exit(f"fake_auth: {ports_env} missing (is the stack up? or give --redis HOST:PORT)")
        addr = ("127.0.0.1", int(ports["REDIS_PORT_1"]))
    if a.cmd == "login" and not os.path.exists(a.key):
        sys.exit(f"fake_auth: no private key at {a.key} (is the stack up? or give --key PEM)")

    r = Redis(*addr)
    try:
        {
            "create": cmd_create,
            "update": cmd_update,
            "login": cmd_login,
            "logout": cmd_logout,
            "deactivate": cmd_deactivate,
            "reactivate": cmd_reactivate,
            "listen": cmd_listen,
        }[a.cmd](r, a)
    except (OSError, RedisError) as e:
        sys.exit(f"fake_auth: redis {addr[0]}:{addr[1]}: {e}")
    finally:
        r.close()


if __name__ == "__main__":
    main()
