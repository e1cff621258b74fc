"""Peak memory for hostile inputs of any claimed size: a sparse multi-GB file of every kind the project
reads (a session state, a stray expert in a bundle's experts/, the manifest, a few-shot file, a parity
corpus, recall filler, calibration files, a checkpoint's config and commit journal, a dispatch head) is
refused, or used, with the peak RSS less than PEAK_LIMIT_MB above an idle session's, each in < 10 s.

One child process opens a session and the PyTorch model (its peak RSS after a short generation is the
idle figure), then
meets every file in turn and reports its peak after each (VmHWM only grows: each figure bounds all
before it). The CLI's own reads (a prompt on stdin with a large --dispatch-bytes, --state) are run as
commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

PEAK_LIMIT_MB = 512
REFUSAL_SECONDS = 10
GB = 1 << 30
NEAT = str(Path(sys.executable).parent / "neat")


def sparse_safetensors(path: Path, payload: int, name: str = "state.memory", metadata: dict | None = None) -> Path:
    """A safetensors file with one float32 tensor claiming `payload` bytes: a hole, no disk used."""
    header = {name: {"dtype": "F32", "shape": [payload // 4], "data_offsets": [0, payload]}}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + payload)
    return path


def sparse_text(path: Path, size: int, head: bytes = b"def f(x):\n    return x\n" * 64) -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


CHILD = r"""
import json, shutil, sys, time
from pathlib import Path

def peak_mb():
    with open("/proc/self/status") as fh:
        return int(next(l for l in fh if l.startswith("VmHWM")).split()[1]) / 1024

from neat_edge.errors import NeatError
from neat_edge.runtimes import open_session

bundle, files = Path(sys.argv[1]), json.loads(sys.argv[2])
session = open_session(bundle)
session.generate(b"hello", 8)
import neat_edge
model = neat_edge.load("default")  # for the dispatch head: loaded before the idle figure is taken
idle = peak_mb()
results = {"idle": idle, "cases": {}}

def case(name, action):
    start = time.perf_counter()
    try:
        action()
        outcome = "used"
    except NeatError as exc:
        outcome = "refused: " + str(exc)[:160]
    results["cases"][name] = {"outcome": outcome, "seconds": time.perf_counter() - start, "peak_mb": peak_mb()}

def with_stray_expert():
    s = open_session(files["bundle_with_expert"])
    assert "huge.safetensors" in s.experts.skipped
    s.generate(b"hi", 2)

from neat_edge.bundle import open_bundle
from neat_edge.calibration.reader import read_calibration_files
from neat_edge.export.verify import read_corpus
from neat_edge.fileio import recover
from neat_edge.model.checkpoint import load_checkpoint
from neat_edge.recall import load_filler
from neat_edge.runtimes.dispatch import read_examples
from neat_edge.experts import apply_dispatch_head

case("state file (4 GB claimed)", lambda: session.load_state(files["state"]))
case("state file (4 GB of zeros)", lambda: session.load_state(files["zeros"]))
case("stray expert in experts/ (4 GB)", with_stray_expert)
case("bundle manifest (4 GB)", lambda: open_bundle(files["bundle_big_manifest"]))
case("few-shot JSON (3 GB)", lambda: read_examples(files["fewshot_json"]))
case("few-shot text (3 GB)", lambda: read_examples(files["text"]))
case("parity corpus, 40 segments (3 GB)", lambda: read_corpus(files["text"], 40, 128))
case("parity corpus, whole (3 GB)", lambda: read_corpus(files["text"], None, 128))
case("recall filler (3 GB)", lambda: load_filler([files["text"]]))
case("calibration files (3 GB)", lambda: read_calibration_files([files["text"]]))
case("checkpoint config.json (3 GB)", lambda: load_checkpoint(files["checkpoint_big_config"]))
case("commit journal (3 GB)", lambda: recover(files["journal_folder"]))
case("dispatch head (4 GB)", lambda: apply_dispatch_head(model, files["head_folder"]))
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def hostile_files(bundle_dir, tmp_path_factory):
    from tests.fuzzing import clone_bundle

    folder = tmp_path_factory.mktemp("hostile")
    files = {"state": sparse_safetensors(folder / "state.safetensors", 4 * GB),
             "zeros": sparse_text(folder / "zeros.safetensors", 4 * GB, b""),
             "text": sparse_text(folder / "big.txt", 3 * GB),
             "fewshot_json": sparse_text(folder / "big.json", 3 * GB, b'["a", "b"]')}
    with_expert = clone_bundle(bundle_dir, folder / "with_expert")
    (with_expert / "experts").mkdir(exist_ok=True)
    sparse_safetensors(with_expert / "experts" / "huge.safetensors", 4 * GB, "latent.layers.0.attn.q",
                       {"format": "neat-expert/1"})
    files["bundle_with_expert"] = with_expert
    big_manifest = clone_bundle(bundle_dir, folder / "big_manifest")
    (big_manifest / "neat.json").unlink()
    sparse_text(big_manifest / "neat.json", 4 * GB, b'{"format": "neat-bundle", ')
    files["bundle_big_manifest"] = big_manifest
    ckpt = folder / "ckpt"
    ckpt.mkdir()
    sparse_text(ckpt / "config.json", 3 * GB, b'{"name": "tiny", ')
    sparse_safetensors(ckpt / "model.safetensors", 4 * GB, "w")
    files["checkpoint_big_config"] = ckpt
    journal = folder / "journal"
    journal.mkdir()
    sparse_text(journal / ".commit-journal.json", 3 * GB, b"[")
    files["journal_folder"] = journal
    head = folder / "head"
    head.mkdir()
    sparse_safetensors(head / "dispatch_head.safetensors", 4 * GB, "weight", {"format": "neat-dispatch-head/1"})
    files["head_folder"] = head
    return {k: str(v) for k, v in files.items()}


def test_hostile_files_in_bounded_memory(bundle_dir, hostile_files):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(bundle_dir), json.dumps(hostile_files)],
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    idle = results["idle"]
    print(f"\nidle session: peak RSS {idle:.0f} MB")
    for name, r in results["cases"].items():
        print(f"  {name}: {r['outcome'][:90]} — {r['seconds']:.2f} s, peak {r['peak_mb'] - idle:+.0f} MB")
    for name, r in results["cases"].items():
        assert r["peak_mb"] - idle < PEAK_LIMIT_MB, (name, r)
        assert r["seconds"] < REFUSAL_SECONDS, (name, r)
    assert results["cases"]["stray expert in experts/ (4 GB)"]["outcome"] == "used"
    assert all(r["outcome"].startswith("refused") for n, r in results["cases"].items()
               if not n.startswith(("stray expert", "few-shot text", "parity corpus, 40", "recall", "calibration")))


def command_peak(args, stdin=None, watch: float | None = None) -> tuple[int | None, float, str]:
    """(exit code or None if stopped, peak RSS in MB, stderr) of a command; `watch` seconds then stopped."""
    proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, end = 0.0, time.time() + (watch or 600)
    while proc.poll() is None and time.time() < end:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                peak = max(peak, int(next(x for x in fh if x.startswith("VmHWM")).split()[1]) / 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.1)
    code = proc.poll()
    if code is None:
        proc.kill()
    err = proc.communicate()[1].decode("utf-8", "replace")
    return code, peak, err


def test_cli_reads_in_bounded_memory(bundle_dir, hostile_files):
    _, idle, _ = command_peak([NEAT, "run", str(bundle_dir), "hello", "--max-bytes", "2"])
    code, state_peak, err = command_peak([NEAT, "run", str(bundle_dir), "x", "--state", hostile_files["state"]])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: corrupted state file"), err[-2000:]
    with open(hostile_files["text"], "rb") as stdin:  # 3 GB on stdin, pass 1 asks for its first MiB
        _, stdin_peak, err = command_peak([NEAT, "run", str(bundle_dir), "--prompt-file", "-", "--dispatch-bytes",
                                           str(1 << 20), "--max-bytes", "1"], stdin=stdin, watch=12)
    assert "Traceback" not in err
    print(f"\nneat run: idle {idle:.0f} MB; --state (4 GB claimed) {state_peak:.0f} MB; "
          f"3 GB prompt on stdin, --dispatch-bytes 1 MiB: {stdin_peak:.0f} MB")
    assert state_peak - idle < PEAK_LIMIT_MB and stdin_peak - idle < PEAK_LIMIT_MB
