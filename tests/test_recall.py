"""`neat recall`: the benchmark's documents, its JSON, its errors, and that it sees recall where there is some."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from neat_edge.config import BOS, NeatConfig
from neat_edge.evaluation import greedy_continuation
from neat_edge.recall import ALPHABET, make_trials, recall_benchmark
from neat_edge.runtimes.session import Session
from neat_edge.spec import STATE_IN, STATE_OUT, GraphSpec, TensorSpec
from tests.test_cli import inprocess_error

TEXTWRAP = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
MICRO = NeatConfig(name="oracle", segment_len=32, patch_size=4, context_len=8, d_local=32, local_heads=2,
                   d_model=32, latent_heads=2, memory_heads=2, n_experts=2, image_codebook_size=16)


class MemorisingBackend:
    """A stand-in for a model that truly memorises: it predicts the byte that followed the last earlier
    occurrence of the current 8-byte context, searching its state: `memory.0.history` (every byte older
    than the byte context: what the Titans memory would have to hold, so reset_memory empties it) and
    `byte_context` (the last context_len bytes, kept by reset_memory). No match: uniform over 256."""

    name = "memorising"
    HISTORY = 1 << 15

    def __init__(self, cfg: NeatConfig):
        state = [TensorSpec("byte_context", "int64", ("batch", cfg.context_len)),
                 TensorSpec("memory.0.history", "float32", ("batch", self.HISTORY))]
        inputs = [TensorSpec("bytes", "int64", ("batch", "segment")), TensorSpec("svf_z", "float32", (1,))]
        outputs = [TensorSpec("byte_logprobs", "float32", ("batch", "segment", cfg.vocab_size))]
        self.spec = GraphSpec("step", tuple(inputs + [TensorSpec(STATE_IN + s.name, s.dtype, s.shape) for s in state]),
                              tuple(outputs + [TensorSpec(STATE_OUT + s.name, s.dtype, s.shape) for s in state]))
        self.initial = {"byte_context": np.full((1, cfg.context_len), BOS, np.int64),
                        "memory.0.history": np.full((1, self.HISTORY), -1, np.float32)}
        self.vocab = cfg.vocab_size

    def step(self, feeds):
        history = feeds[STATE_IN + "memory.0.history"][0]
        context = feeds[STATE_IN + "byte_context"][0]
        seen = bytes(int(b) for b in history if b >= 0) + bytes(int(b) for b in context if b < 256)
        segment = bytes(feeds["bytes"][0].astype(np.uint8))
        logp = np.full((1, len(segment), self.vocab), np.log(1 / 256), np.float32)
        logp[..., 256:] = -1e9
        for i in range(len(segment)):
            visible = seen + segment[:i]
            at = visible.rfind(visible[-8:], 0, len(visible) - 1) if len(visible) >= 9 else -1
            if at >= 0:
                logp[0, i, :256] = np.log(0.01 / 255)
                logp[0, i, visible[at + 8]] = np.log(0.99)
        everything = seen + segment
        older = np.frombuffer(everything[: -len(context)], np.uint8)[-self.HISTORY :].astype(np.float32)
        new_history = np.full(self.HISTORY, -1, np.float32)
        new_history[self.HISTORY - len(older) :] = older
        new_context = np.frombuffer(everything[-len(context) :], np.uint8).astype(np.int64)
        return {"byte_logprobs": logp, "image_logits": np.zeros((1, len(segment), 1), np.float32),
                STATE_OUT + "byte_context": new_context[None], STATE_OUT + "memory.0.history": new_history[None]}


def oracle_session() -> Session:
    backend = MemorisingBackend(MICRO)
    return Session(backend, MICRO, backend.initial)


def test_benchmark_sees_recall_where_the_memory_holds_the_string():
    """Through the real Session and benchmark code: a model that recalls everything its memory holds
    recalls every repeat with the memory carried, and nothing once the memory is reset each segment
    (the gaps put the first occurrence beyond the segment and the byte context)."""
    plan = make_trials(TEXTWRAP.read_bytes(), [64, 200], 4, 40, MICRO.segment_len, seed=1)
    report = recall_benchmark(oracle_session(), plan)
    assert [row["distance_bytes"] for row in report["distances"]] == [64, 200]
    for row in report["distances"]:
        assert row["exact_match"] == {"carry": 1.0, "reset": 0.0}
        assert row["byte_match"]["carry"] == 1.0 and row["byte_match"]["reset"] < 0.2
        assert row["repeat_bits_per_byte"]["carry"] < 0.1 < 7.5 < row["repeat_bits_per_byte"]["reset"]
        assert row["first_bits_per_byte"] > 7.5  # a fresh random string: nothing to recall yet


def test_documents_are_seeded_and_shaped_as_documented():
    filler = TEXTWRAP.read_bytes()
    a = make_trials(filler, [100, 300], 3, 32, 32, seed=5)
    assert a == make_trials(filler, [100, 300], 3, 32, 32, seed=5)
    assert a != make_trials(filler, [100, 300], 3, 32, 32, seed=6)
    for distance, trials in a.items():
        for t in trials:
            assert len(t.gap) == distance and 32 <= len(t.lead) < 64 and len(t.needle) == 32
            assert set(t.needle) <= set(ALPHABET)
            assert t.lead + t.gap in filler  # one contiguous slice of the filler
            assert t.prompt.endswith(t.needle[:8]) and t.prompt.count(t.needle) == 1


def test_reset_arm_resets_the_memory_during_generation():
    session = oracle_session()
    session.score(b"x" * 20)
    greedy_continuation(session, 30, "reset-each-segment")  # crosses the boundary at byte 32
    assert session.position == 50
    np.testing.assert_array_equal(session.state["memory.0.history"], session._initial["memory.0.history"])
    greedy_continuation(session, 30, "carry")
    assert (session.state["memory.0.history"] >= 0).any()


def test_cli_json_schema(tmp_path):
    out = tmp_path / "recall.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).parent / "neat"
    proc = subprocess.run([str(exe), "recall", "default", "--filler", str(TEXTWRAP), "--distances", "160,300",
                           "--trials", "2", "--json", str(out)], capture_output=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(out.read_text())
    assert report["trials"] == 2 and report["string_bytes"] == 32 and report["backend"] == "torch"
    assert [row["distance_bytes"] for row in report["distances"]] == [160, 300]
    for row in report["distances"]:
        assert 0 < row["first_bits_per_byte"] < 30
        for key in ("repeat_bits_per_byte", "exact_match", "byte_match"):
            assert set(row[key]) == {"carry", "reset"}
        assert all(0 < v < 30 for v in row["repeat_bits_per_byte"].values())
        assert all(0 <= v <= 1 for v in (*row["exact_match"].values(), *row["byte_match"].values()))


@pytest.mark.parametrize("args, needle", [
    (["--filler", "/no/such/file"], "filler not found"),
    (["--filler", str(TEXTWRAP), "--distances", "100,x"], "--distances"),
    (["--filler", str(TEXTWRAP), "--distances", "0"], "--distances"),
    (["--filler", str(TEXTWRAP), "--distances", "100,100"], "twice"),
    (["--filler", str(TEXTWRAP), "--distances", "100000"], "the filler has"),
    (["--filler", str(TEXTWRAP), "--length", "16"], "--length"),
    (["--filler", str(TEXTWRAP), "--trials", "0"], "--trials"),
])
def test_bad_input_is_one_error_line(args, needle, monkeypatch, capsys):
    from neat_edge.tools.cli import main

    assert needle in inprocess_error(main, ["neat", "recall", "default", *args], monkeypatch, capsys)


def test_bad_model_is_one_error_line(monkeypatch, capsys, tmp_path):
    from neat_edge.tools.cli import main

    line = inprocess_error(main, ["neat", "recall", str(tmp_path), "--filler", str(TEXTWRAP)], monkeypatch, capsys)
    assert "neither a bundle" in line


def test_a_bundle_on_onnxruntime_measures_what_pytorch_measures(bundle_dir):
    from neat_edge.evaluation import open_eval_session

    plan = make_trials(TEXTWRAP.read_bytes(), [160], 1, 32, 128, seed=3)
    ort, ref = (recall_benchmark(open_eval_session(m, b), plan)["distances"][0]
                for m, b in ((bundle_dir, "onnxruntime"), ("default", None)))
    assert abs(ort["first_bits_per_byte"] - ref["first_bits_per_byte"]) < 1e-3
    for arm in ("carry", "reset"):
        assert abs(ort["repeat_bits_per_byte"][arm] - ref["repeat_bits_per_byte"][arm]) < 1e-3
        assert ort["byte_match"][arm] == ref["byte_match"][arm]


def test_distances_inside_attention_are_marked_and_placed_in_one_segment():
    """A trial whose string, gap, repeat and continuation fit in one segment is placed in one segment (copying
    by attention); from segment_len + context_len on the first occurrence is out of every trial's reach."""
    filler, seg, ctx = TEXTWRAP.read_bytes(), 128, 32
    plan = make_trials(filler, [24, 100, seg + ctx], 16, 32, seg, seed=2, context_len=ctx)
    for t in plan[24]:
        start, end = len(t.lead), len(t.prompt) + 24  # the first occurrence .. the continuation's last byte
        assert t.inside_attention and start // seg == (end - 1) // seg
    assert not any(t.inside_attention for t in plan[seg + ctx])
    from neat_edge.recall import visible_to_attention

    shares = [t.inside_attention for t in plan[100]]
    assert shares == [visible_to_attention(len(t.lead), len(t.prompt), seg, ctx) for t in plan[100]]
    rows = recall_benchmark(oracle_session(), make_trials(filler, [24, 200], 2, 32, seg, seed=1,
                                                          context_len=ctx))["distances"]
    assert [(r["inside_attention"], r["inside_attention_share"]) for r in rows] == [(True, 1.0), (False, 0.0)]
