"""Running one case of scripts/hostile_cases.py: a command watched for its exit, stderr, peak RSS and
hang, and judged (one `error:` line, no traceback, no signal death, nothing left behind); and the child
that runs the Python API cases in one process."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

HANG_SECONDS, RSS_LIMIT_MB = 120, 512


# --- running a case -------------------------------------------------------------------------------------
def peak_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(next(x for x in fh if x.startswith("VmHWM")).split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0


def run_cli(args, cwd: Path, stdin=None, interrupt_after: float | None = None, watch: float | None = None,
            extra_sigint: float | None = None) -> dict:
    """Run a command: its exit code (negative: a signal), stderr, peak RSS, whether it hung."""
    proc = subprocess.Popen(args, cwd=cwd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    start, peak, sent, hung, stopped = time.time(), 0.0, False, False, False
    err_chunks = []
    os.set_blocking(proc.stderr.fileno(), False)
    while proc.poll() is None:
        peak = max(peak, peak_of(proc.pid))
        elapsed = time.time() - start
        if interrupt_after is not None and not sent and elapsed >= interrupt_after:
            proc.send_signal(signal.SIGINT)
            if extra_sigint is not None:
                time.sleep(extra_sigint)
                proc.send_signal(signal.SIGINT)
            sent = True
        if watch is not None and elapsed >= watch:
            proc.kill()
            stopped = True
            break
        if elapsed >= HANG_SECONDS:
            proc.kill()
            hung = True
            break
        chunk = proc.stderr.read()
        if chunk:
            err_chunks.append(chunk)
        time.sleep(0.05)
    proc.wait()
    rest = proc.stderr.read()
    err = b"".join(err_chunks + ([rest] if rest else [])).decode("utf-8", "replace")
    return {"code": proc.returncode, "err": err, "peak_mb": peak, "hung": hung, "stopped": stopped,
            "seconds": time.time() - start}


def judge_cli(r: dict, idle: float, folder: Path, expect: str | None = None) -> str | None:
    """Why the case failed (None: it held)."""
    if r["hung"]:
        return "hang"
    if "LEFT BEHIND" in r["err"]:
        return r["err"][r["err"].index("LEFT BEHIND"):][:300]
    if "Traceback" in r["err"]:
        return "traceback: " + r["err"][-400:].replace("\n", " | ")
    if not r["stopped"] and r["code"] < 0:
        return f"killed by signal {-r['code']}"
    lines = [x for x in r["err"].splitlines() if x.strip()]
    if not r["stopped"] and r["code"] != 0:
        if not lines or not lines[-1].startswith("error: ") or sum(x.startswith("error:") for x in lines) != 1:
            return f"exit {r['code']} without one error line: {lines[-3:]}"
        if "internal error" in lines[-1]:
            return lines[-1][:300]
        if expect and expect not in lines[-1]:
            return f"expected {expect!r}, got {lines[-1][:200]}"
    elif expect and not r["stopped"] and r["code"] == 0 and expect != "ok":
        return f"accepted, expected {expect!r}"
    left = [str(p) for p in folder.rglob("*") if p.name.endswith((".partial", ".tmp")) or p.name.endswith(".old")]
    if left:
        return f"left behind: {left[:3]}"
    if r["peak_mb"] - idle > RSS_LIMIT_MB:
        return f"peak RSS {r['peak_mb']:.0f} MB (idle {idle:.0f})"
    return None


API_CHILD = r"""
import json, sys, time, traceback, math
from pathlib import Path
import numpy as np
from neat_edge.errors import NeatError
from neat_edge.runtimes import open_session

def peak():
    with open("/proc/self/status") as fh:
        return int(next(l for l in fh if l.startswith("VmHWM")).split()[1]) / 1024

bundle, cases = sys.argv[1], json.loads(sys.argv[2])
s = open_session(bundle)
s.generate(b"warm", 4)
idle = peak()
out = []
for name, code in cases:
    start = time.perf_counter()
    try:
        exec(code, {"s": s, "np": np, "open_session": open_session, "bundle": bundle, "Path": Path, "math": math})
        outcome = "accepted"
    except NeatError as exc:
        outcome = "refused: " + str(exc)[:120]
    except BaseException as exc:
        outcome = "FAILED: " + "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]
    out.append([name, outcome, time.perf_counter() - start, peak() - idle])
print(json.dumps(out))
"""
