"""Huge inputs in bounded memory: `neat eval` and `neat run --prompt-file` read a 1 GB file (sparse: no
disk used) in chunks, never whole. The peak RSS of the command on the 1 GB file is compared with the
same command on a small file: it may not grow by more than a small constant (the old read-it-whole
code grew by the file's size).

`neat run` scores every byte of its prompt (hours for 1 GB on a CPU), so its run is watched for a
while as it streams and then stopped; `neat eval --max-bytes` reads only what it evaluates.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GROWTH_LIMIT_MB = 64  # peak RSS on the 1 GB file vs on the small one
NEAT = str(Path(sys.executable).parent / "neat")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("huge")
    big, small = folder / "big.bin", folder / "small.bin"
    with open(big, "wb") as fh:  # 1 GB of text-like bytes at both ends, a hole (zeros) in between
        fh.write(b"def f(x):\n    return x\n" * 400)
        fh.truncate(1 << 30)
    small.write_bytes(b"def f(x):\n    return x\n" * 400)
    return big, small


# Runs a command in a fork of this small launcher, so the child's peak RSS (wait4) is its own, not the
# size of the pytest process it would otherwise be forked from.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(args) -> float:
    """Peak RSS of a command run to its end."""
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return int(proc.stdout.split()[-1]) / 1024


def watched_peak_rss_mb(args, seconds: float) -> float:
    """Peak RSS (VmHWM) of a command watched for `seconds` while it works, then stopped."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, end = 0.0, time.time() + seconds
    try:
        while time.time() < end and proc.poll() is None:
            with open(f"/proc/{proc.pid}/status") as fh:
                hwm = next(line for line in fh if line.startswith("VmHWM"))
            peak = max(peak, int(hwm.split()[1]) / 1024)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return peak


def test_eval_reads_only_what_it_evaluates(bundle_dir, files):
    big, small = files
    args = [NEAT, "eval", str(bundle_dir), "--max-bytes", "4096", "--no-baselines", "--data"]
    base, huge = peak_rss_mb([*args, str(small)]), peak_rss_mb([*args, str(big)])
    print(f"\nneat eval --max-bytes 4096: peak RSS {base:.0f} MB (10 KB file), {huge:.0f} MB (1 GB file)")
    assert huge - base <= GROWTH_LIMIT_MB


@pytest.mark.parametrize("seconds", [pytest.param(15, id="ci"), pytest.param(300, id="slow", marks=pytest.mark.slow)])
def test_run_streams_a_huge_prompt_file(bundle_dir, files, seconds):
    big, small = files
    args = [NEAT, "run", str(bundle_dir), "--max-bytes", "1", "--prompt-file"]
    base = peak_rss_mb([*args, str(small)])
    huge = watched_peak_rss_mb([*args, str(big)], seconds)
    print(f"\nneat run --prompt-file: peak RSS {base:.0f} MB (10 KB file), {huge:.0f} MB (1 GB file, {seconds} s)")
    assert huge - base <= GROWTH_LIMIT_MB


@pytest.mark.slow
def test_eval_streams_a_long_document(bundle_dir, files, tmp_path):
    """A whole document longer than one read (3 MB, baselines included): the same peak as 10 KB."""
    big, small = files
    doc = tmp_path / "doc.bin"
    with open(big, "rb") as src, open(doc, "wb") as dst:
        dst.write(src.read(3 << 20))
    args = [NEAT, "eval", str(bundle_dir), "--data"]
    base, long = peak_rss_mb([*args, str(small)]), peak_rss_mb([*args, str(doc)])
    print(f"\nneat eval (baselines included): peak RSS {base:.0f} MB (10 KB), {long:.0f} MB (3 MB document)")
    assert long - base <= GROWTH_LIMIT_MB + 100  # xz -9's own buffers grow with the input up to its window
