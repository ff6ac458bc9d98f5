#!/usr/bin/env python3
"""Runs the walkthrough of docs/stack.md as written, and can record its output there.

Every line of a ```console block that starts with "$ " is a command (continued on the next
line while it ends with a backslash); the other lines are its recorded output. The commands
run in order in one bash in the repository, as a reader would type them (as root, no stack
up). Prints each command with its output and exit status, and exits 1 if any command
failed. With --write, the recorded outputs in the page are replaced by this run's.

  python3 scripts/walkthrough.py [--write] [PAGE]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(lines):
    """The page as items: ("text", line) or ("cmd", [lines]) or ("out", line)."""
    items, in_console, i = [], False, 0
    while i < len(lines):
        line = lines[i]
        if not in_console:
            items.append(("text", line))
            in_console = line.strip() == "```console"
        elif line.strip() == "```":
            items.append(("text", line))
            in_console = False
        elif line.startswith("$ "):
            cmd = [line]
            while cmd[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
            items.append(("cmd", cmd))
        else:
            items.append(("out", line))
        i += 1
    return items


def run(cmds):
    script = []
    for n, cmd in enumerate(cmds):
        script.append(f"printf '\\n@@WALK {n}@@\\n'")
        script.append("\n".join(cmd)[2:])
        script.append(f"printf '\\n@@RC {n} %d@@\\n' $?")
    # From a file, with stdin closed, so that no command can read the rest of the script.
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write("\n".join(script) + "\n")
        f.flush()
        proc = subprocess.run(["bash", f.name], cwd=REPO, text=True, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    outs, rcs = {}, {}
    for m in re.finditer(r"\n@@WALK (\d+)@@\n(.*?)\n?\n@@RC \1 (\d+)@@\n", proc.stdout, re.S):
        outs[int(m.group(1))] = m.group(2).rstrip("\n")
        rcs[int(m.group(1))] = int(m.group(3))
    return outs, rcs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="record this run's outputs in the page")
    ap.add_argument("page", nargs="?", default=os.path.join(REPO, "docs", "stack.md"))
    a = ap.parse_args()
    lines = open(a.page).read().split("\n")
    items = parse(lines)
    cmds = [body for kind, body in items if kind == "cmd"]
    outs, rcs = run(cmds)
    failed = 0
    for n, cmd in enumerate(cmds):
        print("\n".join(cmd))
        if outs.get(n):
            print(outs[n])
        rc = rcs.get(n)
        if rc != 0:
            failed += 1
            print(f"[walkthrough] exit status {rc if rc is not None else 'missing (the shell stopped)'}")
    if a.write:
        new, n = [], 0
        for kind, body in items:
            if kind == "text":
                new.append(body)
            elif kind == "cmd":
                new.extend(body)
                if outs.get(n):
                    new.extend(outs[n].split("\n"))
                n += 1
        open(a.page, "w").write("\n".join(new))
    if failed:
        sys.exit(f"[walkthrough] {failed} command(s) failed")


if __name__ == "__main__":
    main()
