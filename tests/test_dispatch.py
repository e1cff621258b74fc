"""Transformer² two-pass dispatch in the session: strategies, the untouched memory, the CLI."""

import json
import shutil

import numpy as np
import pytest

from neat_edge.errors import NeatError
from neat_edge.experts import base_model_id, save_dispatch_head, save_expert
from neat_edge.model.checkpoint import load_checkpoint, save_checkpoint
from neat_edge.model.svf import svf_layout
from neat_edge.runtimes import open_model_session
from neat_edge.runtimes.dispatch import cem_search, parse_strategy, read_examples
from tests.test_cli import assert_clean_error, run


def _z(model, value_or_seed, scale=0.2):
    if isinstance(value_or_seed, float):
        return {n: np.full(r, value_or_seed, np.float32) for n, _, r in svf_layout(model)}
    rng = np.random.default_rng(value_or_seed)
    return {n: (1 + scale * rng.standard_normal(r)).astype(np.float32) for n, _, r in svf_layout(model)}


@pytest.fixture(scope="module")
def library_model(tmp_path_factory, model):
    """The default weights as a checkpoint with experts a, b (seeded z) and a dispatch head over them."""
    ckpt = tmp_path_factory.mktemp("library") / "ckpt"
    save_checkpoint(model, ckpt)
    base_id = base_model_id(model)
    save_expert(ckpt / "experts" / "a.safetensors", "prose", _z(model, 1), {"base_id": base_id})
    save_expert(ckpt / "experts" / "b.safetensors", "python", _z(model, 2), {"base_id": base_id})
    rng = np.random.default_rng(0)
    head = model.dispatch_head.weight.shape
    save_dispatch_head(ckpt / "dispatch_head.safetensors", rng.standard_normal(head).astype(np.float32) * 0.1,
                       np.zeros(head[0], np.float32), ["b", "a"], base_id)
    return load_checkpoint(ckpt)


def test_pass1_leaves_the_memory_bit_identical(library_model, corpus):
    s = open_model_session(library_model)
    s.score(corpus[:300])  # two committed segments and a pending partial one
    before = s.snapshot()
    result = s.dispatch(corpus[300:1000], "classifier", max_bytes=400)
    assert result.pass1_bytes == 400 and set(result.weights) == {"a", "b"}
    for k, v in before["state"].items():
        assert s.state[k].dtype == v.dtype and np.array_equal(s.state[k], v), k
    for k, v in before["patch_state"].items():
        assert np.array_equal(s.patch_state[k], v), k
    assert (s.snapshot()["pending"], s.position) == (before["pending"], before["position"])
    # the stream goes on exactly as if pass 1 had never run
    s.svf_z = np.ones_like(s.svf_z)
    ref = open_model_session(library_model)
    ref.score(corpus[:300])
    np.testing.assert_array_equal(s.score(corpus[300:700]), ref.score(corpus[300:700]))


def test_classifier_is_softmax_of_mean_pass1_logits(library_model, corpus):
    s = open_model_session(library_model)
    prompt = corpus[:333]
    result = s.dispatch(prompt + b"ignored beyond the budget", "classifier", max_bytes=333)
    seg = s.config.segment_len
    logits, state = [], s.state
    for start in range(0, len(prompt), seg):  # by hand: segments from the fresh state, z = 1
        out, nxt, _, _ = s.run_segment(prompt[start : start + seg], state, None, np.ones_like(s.svf_z))
        logits.append(out["dispatch_logits"][0])
        state = nxt
    mean = np.mean(logits, axis=0)[:2]  # slots 0, 1 = experts b, a
    p = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
    assert result.weights["b"] == pytest.approx(p[0], abs=1e-6) and result.weights["a"] == pytest.approx(p[1], abs=1e-6)
    hand = result.weights["a"] * s.experts.get("a").flat(s.experts.layout).astype(np.float64) \
        + result.weights["b"] * s.experts.get("b").flat(s.experts.layout)
    np.testing.assert_allclose(s.svf_z, hand, rtol=0, atol=1e-6)


def test_mixture_of_two_experts_equals_the_hand_mixed_z(library_model, corpus):
    s = open_model_session(library_model)
    result = s.dispatch(b"", "expert:a=0.25,b=0.75")
    assert result.strategy == "expert" and result.weights == {"a": 0.25, "b": 0.75}
    za, zb = (s.experts.get(n).flat(s.experts.layout).astype(np.float64) for n in ("a", "b"))
    hand = (0.25 * za + 0.75 * zb).astype(np.float32)
    np.testing.assert_array_equal(s.svf_z, hand)
    by_hand = open_model_session(library_model, svf_z=hand)
    np.testing.assert_array_equal(s.score(corpus[:400]), by_hand.score(corpus[:400]))


def test_fewshot_cem_prefers_the_expert_that_explains_the_examples(library_model, corpus, tmp_path):
    """Expert `keep` is the base model (z = 1), `crush` scales every singular value by a random factor
    (1 ± 0.8): the CEM search over α must lean on `keep` and beat its own uniform starting point."""
    folder = tmp_path / "experts"
    base_id = base_model_id(library_model)
    save_expert(folder / "keep.safetensors", "base", _z(library_model, 1.0), {"base_id": base_id})
    save_expert(folder / "crush.safetensors", "noise", _z(library_model, 9, scale=0.8), {"base_id": base_id})
    examples = tmp_path / "shots.json"
    examples.write_text(json.dumps([corpus[:200].decode(), corpus[1000:1200].decode()]))
    assert read_examples(examples) == [corpus[:200], corpus[1000:1200]]
    s = open_model_session(library_model, experts_dir=folder)
    result = s.dispatch(b"", f"fewshot:{examples}")
    w = result.weights
    assert w["keep"] > 0.7 and abs(w["crush"]) < 0.3, w
    d = result.details
    curve = d["cem_best_per_generation"]  # bits/byte of the best α so far, from the uniform start
    assert curve == sorted(curve, reverse=True) and d["fewshot_bits_per_byte"] == curve[-1] < 0.8 * curve[0]


def test_cem_search_finds_a_known_optimum():
    target = np.array([0.8, -0.3, 1.5])
    alpha, best, history = cem_search(lambda a: -float(np.square(a - target).sum()), 3, generations=25,
                                      population=32, elites=6)
    np.testing.assert_allclose(alpha, target, atol=0.1)
    assert history == sorted(history)


def test_bad_dispatch_requests(library_model, tmp_path):
    s = open_model_session(library_model)
    for spec, msg in (("oracle", "unknown dispatch"), ("expert", "needs an argument"), ("none:x", "no argument"),
                      ("expert:zzz", "no expert 'zzz'"), ("expert:a=x", "bad expert weight"),
                      (f"fewshot:{tmp_path / 'missing.txt'}", "not found")):
        with pytest.raises(NeatError, match=msg):
            s.dispatch(b"abc", spec)
    assert parse_strategy("fewshot:a:b.txt") == ("fewshot", "a:b.txt")
    (tmp_path / "empty").mkdir()
    bare = open_model_session(library_model, experts_dir=tmp_path / "empty")
    with pytest.raises(NeatError, match="no trained dispatch head"):
        bare.dispatch(b"abc", "classifier")
    with pytest.raises(NeatError, match="no experts"):
        bare.dispatch(b"abc", f"fewshot:{tmp_path / 'shots.txt'}") if (tmp_path / "shots.txt").write_text("x") else None
    assert bare.dispatch(b"abc", "none").weights == {} and np.array_equal(bare.svf_z, np.ones_like(bare.svf_z))


def test_run_cli_two_pass_json_and_experts_listing(bundle_dir, library_model, tmp_path):
    """`neat run --dispatch expert:NAME --json --verbose` and `neat experts --json` on a bundle with an added
    expert file; bad --dispatch values fail with one line."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    manifest = json.loads((bundle / "neat.json").read_text())
    z = _z(library_model, 5)
    save_expert(bundle / "experts" / "extra.safetensors", "test domain", z, {"base_id": manifest["svf_base_id"]})
    out = tmp_path / "run.json"
    p = run("neat", "run", str(bundle), "def main(", "--max-bytes", "16", "--dispatch", "expert:extra",
            "--json", str(out), "--verbose")
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads(out.read_text())
    assert report["dispatch"]["strategy"] == "expert" and report["dispatch"]["weights"] == {"extra": 1.0}
    assert isinstance(report["output"], str) and p.stdout[:-1].decode("utf-8", "replace") == report["output"]
    assert "extra 1.000" in p.stderr.decode()
    listing = tmp_path / "experts.json"
    p = run("neat", "experts", str(bundle), "--json", str(listing))
    assert p.returncode == 0, p.stderr.decode()
    entries = json.loads(listing.read_text())
    assert {"name": "extra", "domain": "test domain"} in entries
    assert all(set(e) == {"name", "domain"} and isinstance(e["domain"], str) for e in entries)
    assert_clean_error(run("neat", "run", str(bundle), "x", "--dispatch", "bogus"), "unknown dispatch")
    assert_clean_error(run("neat", "run", str(bundle), "x", "--dispatch", "expert:nope"), "no expert 'nope'")
    assert_clean_error(run("neat", "experts", str(tmp_path / "missing")), "not found")


def test_bench_reports_dispatch_overhead(bundle_dir, tmp_path):
    out = tmp_path / "bench.json"
    p = run("neat-bench", str(bundle_dir), "--backends", "onnxruntime", "--runs", "2", "--warmup", "0", "--segments",
            "2", "--generate-bytes", "4", "--dispatch-generate-bytes", "64", "--json", str(out))
    assert p.returncode == 0, p.stderr.decode()
    (r,) = json.loads(out.read_text())["results"]
    assert 0.0 < r["dispatch_overhead"] < 1.0
    d = r["dispatch"]
    assert d["generated_bytes"] == 64 and d["dispatch_ms"] < d["end_to_end_ms"]
    assert abs(sum(d["weights"].values()) - 1.0) < 1e-6


def test_pass1_features_are_what_the_graph_feeds_the_dispatch_head(library_model, corpus):
    """The dispatch head is trained on encoder-only features: they must equal the head's input in step()."""
    import torch

    from neat_edge.training.experts import pass1_features
    from neat_edge.training.patches import WindowPatches

    m, seg = library_model, library_model.cfg.segment_len
    x = torch.tensor([list(corpus[: 2 * seg + 40]), list(corpus[500 : 500 + 2 * seg + 40])])
    captured = []
    hook = m.dispatch_head.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    try:
        s = open_model_session(m)
        for row in x:
            s.reset()
            s.dispatch(bytes(row.tolist()), "classifier")
    finally:
        hook.remove()
    by_session = torch.stack([torch.stack(captured[i * 3 : (i + 1) * 3]).mean(0)[0] for i in range(2)])
    torch.testing.assert_close(pass1_features(m, x, WindowPatches(m.cfg)), by_session, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory):
    """Two real byte domains, a few files each: license prose and Python source (the stdlib's own)."""
    import sysconfig
    from pathlib import Path

    std = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("domains")
    for name, files in (("prose", ["LICENSE.txt"]), ("python", ["textwrap.py", "bisect.py", "shlex.py"])):
        (root / name).mkdir()
        for f in files:
            if (std / f).is_file():
                (root / name / f).write_bytes((std / f).read_bytes())
    return root


def test_train_expert_cli_reinforce_and_dispatch_head(library_model, two_domains, tmp_path):
    """`neat train --expert` (REINFORCE objective) writes a loadable expert; the dispatch head trains over
    two experts from the data they recorded and is picked up when the checkpoint loads."""
    from neat_edge.experts import load_expert
    from neat_edge.training.experts import train_dispatch_head

    ckpt = tmp_path / "ckpt"
    save_checkpoint(library_model, ckpt)
    out = tmp_path / "lib"
    p = run("neat", "train", "--expert", "lic", "--domain", "license texts", "--base", str(ckpt), "--data",
            str(two_domains / "prose"), "--out", str(out), "--steps", "2", "--batch-size", "2", "--eval-bytes", "1024",
            "--objective", "reinforce")
    assert p.returncode == 0, p.stderr.decode()
    expert = load_expert(out / "lic.safetensors")
    assert expert.domain == "license texts" and expert.metadata["objective"] == "reinforce"
    assert expert.metadata["base_id"] == base_model_id(library_model)
    assert_clean_error(run("neat", "train", "--expert", "x", "--domain", "d", "--data", str(two_domains),
                           "--out", str(out)), "--base")
    # the head: experts recording their data, in the checkpoint's own experts/ folder
    base_id = base_model_id(library_model)
    for name in ("prose", "python"):
        save_expert(ckpt / "experts" / f"{name}.safetensors", name, _z(library_model, 1.0),
                    {"base_id": base_id, "data": [str(two_domains / name)]})
    report = train_dispatch_head(ckpt, samples=40, max_prompt_bytes=256, evaluate=False, show_progress=False)
    assert report["experts"] == ["prose", "python"] and report["train_accuracy"] >= 0.9
    reloaded = load_checkpoint(ckpt)
    assert reloaded.dispatch_slots == ["prose", "python"]
    s = open_model_session(reloaded)
    prose = (two_domains / "prose" / "LICENSE.txt").read_bytes()[2000:2256]
    assert max(s.dispatch(prose, "classifier").weights.items(), key=lambda kv: kv[1])[0] == "prose"
