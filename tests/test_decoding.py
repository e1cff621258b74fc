"""Incremental decoding: the decode graphs give the segment step's log-probs and state, byte by byte, on
every memory variant and patching, through PyTorch and ONNX Runtime."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from neat_edge.bundle import open_bundle
from neat_edge.config import NeatConfig
from neat_edge.export.pipeline import export_bundle
from neat_edge.model.checkpoint import build
from neat_edge.model.decode import IncrementalDecoder, chunk_span
from neat_edge.model.entropy import EntropyConfig, build_entropy_model, default_patching
from neat_edge.model.svf import svf_layers
from neat_edge.patching import segment_patches
from neat_edge.runtimes import open_model_session, open_session
from neat_edge.runtimes.select import decode_graphs
from tests.test_variants import randomized  # random conv taps, a large memory step: a memory doing real work


def micro(arch="mac", window=0, chunks=1, patching="fixed", pooling="mean", ngram=0) -> NeatConfig:
    extra = {"patching": "entropy", "target_patch_len": 30, "max_patch_len": 8} if patching == "entropy" else {}
    return NeatConfig(name=f"micro-{arch}", segment_len=32, patch_size=4, context_len=8, d_local=32, local_heads=2,
                      encoder_layers=1, decoder_layers=1, d_model=48, latent_heads=2, latent_layers=2,
                      memory_heads=2, memory_arch=arch, attn_window=window, memory_chunks=chunks, n_experts=2,
                      image_codebook_size=16, patch_pooling=pooling, ngram_buckets=ngram, svf_scope="all",
                      previous_bytes=2 if pooling == "cross" else 0, **extra)


def decode_segments(model, data: torch.Tensor):
    """Teacher-forced incremental decoding of fixed-patch segments: log-prob rows and committed states."""
    cfg, dec = model.cfg, IncrementalDecoder(model)
    z = model.default_svf_z()
    z = {name: layer.dense_weight(z) for name, layer in svf_layers(model)}  # what decode_svf gives the graphs
    state, rows, states = model.initial_state(data.shape[0]), [], []
    with torch.no_grad():
        for s in range(data.shape[1] // cfg.segment_len):
            seg = data[:, s * cfg.segment_len : (s + 1) * cfg.segment_len]
            lp, _, cache = dec.start(state, z)
            out = [lp]
            for i in range(cfg.segment_len):
                tok, pos = seg[:, i : i + 1], torch.full((data.shape[0],), i)
                patch = torch.full_like(pos, i // cfg.patch_size)
                start = patch * cfg.patch_size
                if i == cfg.segment_len - 1:
                    state = dec.commit(tok, pos, patch, start, state, cache, z)
                elif (i + 1) % cfg.patch_size:
                    lp, _, cache = dec.byte(tok, pos, patch, cache, z)
                    out.append(lp)
                else:
                    lp, _, cache = dec.patch(tok, pos, patch, start, state, cache, z)
                    out.append(lp)
                    if cfg.memory_chunks > 1 and (i // cfg.patch_size + 1) % chunk_span(cfg) == 0:
                        cache.update(dec.chunk(patch // chunk_span(cfg), cache))
            rows.append(torch.stack(out, 1))
            states.append(state)
    return rows, states


@pytest.mark.parametrize("arch, window, chunks, pooling", [
    ("mac", 0, 1, "mean"), ("mac", 0, 3, "cross"), ("mag", 3, 2, "mean"), ("mal", 5, 4, "cross"), ("mag", 0, 1, "mean")])
def test_decode_forms_equal_the_segment_step(arch, window, chunks, pooling):
    """Byte by byte (decode_start / byte / patch / chunk / commit) = NeatModel.step: every log-prob row
    and the committed state after each segment, for every memory variant (two streams at once)."""
    model = randomized(micro(arch, window, chunks, pooling=pooling, ngram=257 if pooling == "cross" else 0))
    cfg = model.cfg
    data = torch.randint(0, 256, (2, 4 * cfg.segment_len), generator=torch.Generator().manual_seed(2))
    rows, states = decode_segments(model, data)
    state = model.initial_state(2)
    ids, mask = segment_patches(cfg.segment_len, cfg.patch_size)
    with torch.no_grad():
        for s, (row, decoded) in enumerate(zip(rows, states)):
            seg = data[:, s * cfg.segment_len : (s + 1) * cfg.segment_len]
            out, state = model.step(seg, torch.from_numpy(ids).repeat(2, 1), torch.from_numpy(mask).repeat(2, 1),
                                    model.default_svf_z(), state)
            torch.testing.assert_close(row, out["byte_logprobs"], atol=2e-5, rtol=0)
            assert decoded.keys() == state.keys()
            for name, value in state.items():
                torch.testing.assert_close(decoded[name].float(), value.float(), atol=2e-5, rtol=1e-5, msg=name)


def test_entropy_model_decodes_byte_by_byte():
    model = build_entropy_model(EntropyConfig(segment_len=32, context_len=16, dim=32, layers=2, heads=2)).eval()
    data = torch.randint(0, 256, (2, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state, ref = model.initial_state(2), []
        for s in range(3):
            out, state = model.step(data[:, s * 32 : (s + 1) * 32], state)
            ref.append(out["entropy"])
        context, got = model.initial_state(2)["byte_context"], []
        for s in range(3):
            entropy, cache = model.decode_start(context)
            got.append(entropy)
            for i in range(32):
                entropy, cache = model.decode_byte(data[:, s * 32 + i : s * 32 + i + 1], torch.full((2,), i), cache)
                if i < 31:
                    got.append(entropy)
            context = torch.cat([context, data[:, s * 32 : (s + 1) * 32]], 1)[:, -16:]
    torch.testing.assert_close(torch.stack(got, 1), torch.cat(ref, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["mag", "mal"])
def test_sliding_window_runs_across_segments(arch):
    """MAG / MAL with a window of 3 patches: the latent layers over two chained segments of 8 patches
    equal them over one segment of 16 (memory kept out: θ, α ≈ 0; no persistent tokens, whose keys sit
    at position 0 of every segment), so the window crosses the segment boundary as the paper's sliding
    window runs over the whole sequence; without the carried window they differ."""
    def model_for(segment_len):
        cfg = NeatConfig.from_dict({**micro(arch, window=3).to_dict(), "segment_len": segment_len,
                                    "persistent_tokens": 0})
        torch.manual_seed(0)
        model = build(cfg)
        with torch.no_grad():
            for layer in model.latent.layers:
                layer.memory.gate_theta.bias.fill_(-30.0)  # θ ≈ 0: no writes
                layer.memory.gate_alpha.bias.fill_(-30.0)  # α ≈ 0: no forgetting
        return model.eval()

    short, long = model_for(32), model_for(64)
    long.load_state_dict(short.state_dict())
    x = torch.randn(1, 16, short.cfg.d_model, generator=torch.Generator().manual_seed(3))
    z, ones = short.default_svf_z(), torch.ones(1, 16)
    with torch.no_grad():
        whole, _ = long.latent(x, ones, long.layer_states(long.initial_state(1)), z)
        first, states = short.latent(x[:, :8], ones[:, :8], short.layer_states(short.initial_state(1)), z)
        second, _ = short.latent(x[:, 8:], ones[:, 8:], states, z)
        cut = [{**st, "window_valid": torch.zeros_like(st["window_valid"])} for st in states]
        alone, _ = short.latent(x[:, 8:], ones[:, 8:], cut, z)
    torch.testing.assert_close(first, whole[:, :8], atol=1e-5, rtol=0)
    torch.testing.assert_close(second, whole[:, 8:], atol=1e-5, rtol=0)
    assert float((alone - whole[:, 8:]).abs().max()) > 1e-3


# --- through the session: generation with the decode graphs equals the segment step ------------------
PROMPT_BYTES, GENERATED = 40, 544  # micro segments are 32 bytes: 17 segment boundaries


def segment_step_scores(session, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """log p and rows of `data` in a fresh stream of the session's backend, through the segment step alone."""
    session.reset()
    decode, session.decode_graphs = session.decode_graphs, None
    try:
        return session.score_with_distributions(data)
    finally:
        session.decode_graphs = decode


def assert_generation_matches_segment_step(session, prompt: bytes, n: int = GENERATED):
    out, logprobs = session.generate(prompt, n, return_logprobs=True)
    assert len(out) == n and logprobs.shape == (n,)
    lp, rows = segment_step_scores(session, prompt + out)
    lp, rows = lp[len(prompt):], rows[len(prompt):]
    # the same bytes as generation through the segment step (greedy: its argmax at every position) ...
    np.testing.assert_array_equal(np.frombuffer(out, np.uint8), rows[:, :256].argmax(-1))
    # ... and the same log-probs
    np.testing.assert_allclose(logprobs, lp, atol=1e-5, rtol=0)


def micro_model(arch: str, patching: str, corpus: bytes):
    window, chunks, pooling = {"mac": (0, 1, "mean"), "mag": (3, 2, "mean"), "mal": (5, 4, "cross")}[arch]
    model = randomized(micro(arch, window, chunks, patching, pooling))
    return model, (default_patching(model.cfg, corpus[:8192]) if patching == "entropy" else None)


@pytest.mark.parametrize("patching", ["fixed", "entropy"])
@pytest.mark.parametrize("arch", ["mac", "mag", "mal"])
def test_torch_generation_equals_segment_step(arch, patching, corpus):
    model, patches = micro_model(arch, patching, corpus)
    assert_generation_matches_segment_step(open_model_session(model, patching=patches), corpus[:PROMPT_BYTES])


ORT_CASES = [("mac", "fixed"), ("mag", "entropy"), ("mal", "fixed")]  # every variant and patching; all in slow
SLOW_ORT_CASES = [("mac", "entropy"), ("mag", "fixed"), ("mal", "entropy")]


@pytest.mark.parametrize("arch, patching", ORT_CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_ORT_CASES])
def test_onnxruntime_generation_equals_segment_step(arch, patching, corpus, tmp_path):
    model, patches = micro_model(arch, patching, corpus)
    manifest = export_bundle(model, tmp_path / "b", patching=patches, segments=8, log=lambda *_: None)
    assert manifest["parity"]["decode"]["backends"]["onnxruntime"]["passed"]
    for graph in manifest["decode"]["graphs"]["onnx"].values():
        ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / graph["file"])).graph.node}
        assert not ops & {"Loop", "Scan", "If"}, graph["file"]
        dynamic = {a for t in graph["inputs"] + graph["outputs"] for a in t["shape"] if isinstance(a, str)}
        assert dynamic <= {"batch"}, graph["file"]  # fixed-size caches: only the batch axis varies
    session = open_session(tmp_path / "b", "onnxruntime")
    assert session.decode_graphs is not None
    cpu = {name: g["cpu"] for name, g in manifest["decode"]["graphs"]["onnx"].items() if "cpu" in g}
    assert {"decode_start", "decode_byte", "decode_patch", "decode_commit"} <= set(cpu)  # the CPU rewrites run here
    assert all(Path(b.path).name == cpu[n]["file"] for n, b in session.decode_graphs.graphs.items() if n in cpu)
    assert "next_cache.enc.0.k" in session.decode_graphs.graphs["decode_byte"].in_place  # past/present shared
    # 64 chained segments on the CPU rewrites (micro segments: 32 bytes); then the plain graphs, as every other
    # runtime runs them
    assert_generation_matches_segment_step(session, corpus[:PROMPT_BYTES], n=64 * 32 if arch == "mac" else GENERATED)
    plain = open_session(tmp_path / "b", "onnxruntime")
    plain.decode_graphs = decode_graphs(open_bundle(tmp_path / "b"), "onnxruntime", "cpu", plain=True)
    files = {n: g["file"] for n, g in manifest["decode"]["graphs"]["onnx"].items()}
    assert all(Path(b.path).name == files[n] for n, b in plain.decode_graphs.graphs.items())
    assert_generation_matches_segment_step(plain, corpus[:PROMPT_BYTES])


# --- the shipped model's bundle --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_default_bundle_generates_2048_bytes_as_the_segment_step(bundle_dir, corpus, backend):
    """The issue's check on the real model: 2,048 greedy bytes (16 segment boundaries) through the decode
    graphs = the segment step's choices, log-probs within 1e-5 of it scoring prompt + bytes afresh."""
    session = open_session(bundle_dir, backend)
    assert session.decode_graphs is not None
    assert_generation_matches_segment_step(session, corpus[:100], n=2048)


def test_bundle_declares_its_decode_graphs_and_caches(bundle_dir):
    manifest = open_bundle(bundle_dir).manifest
    decode = manifest["decode"]
    graphs = decode["graphs"]["onnx"]
    assert {"decode_start", "decode_byte", "decode_patch", "decode_commit", "decode_svf"} <= set(graphs)
    caches = {c["name"]: c for c in decode["caches"]}
    assert caches["enc.0.k"]["max_length"] == manifest["config"]["context_len"] + manifest["config"]["segment_len"]
    for entry in graphs.values():  # every cache a graph takes or returns is declared, with its shape
        for t in entry["inputs"] + entry["outputs"]:
            name = t["name"].split(".", 1)[1] if t["name"].startswith(("cache.", "next_cache.")) else None
            if name is not None:
                assert caches[name]["shape"] == t["shape"], t["name"]
    byte = graphs["decode_byte"]
    assert not any("image" in t["name"] or "dispatch" in t["name"] for t in byte["outputs"])  # text only
    assert {(s["input"], s["output"]) for s in byte["state"]} >= {("cache.enc.0.k", "next_cache.enc.0.k")}


def test_save_and_load_mid_segment_while_generating(bundle_dir, tmp_path):
    a = open_session(bundle_dir)
    first = a.generate(b"def parse(text):\n    ", 70)  # ends inside a segment
    a.save_state(tmp_path / "s.safetensors")
    rest = a.generate(b"", 200)
    b = open_session(bundle_dir)
    b.load_state(tmp_path / "s.safetensors")
    assert b.generate(b"", 200) == rest
    whole = open_session(bundle_dir).generate(b"def parse(text):\n    ", 270)
    assert first + rest == whole


def test_a_new_svf_z_rebuilds_the_caches(bundle_dir):
    """Transformer² pass 2 changes z mid-stream: the decode caches (made with the old z) are rebuilt, so
    generation equals a stream that consumed the same bytes and then took the new z."""
    prompt = b"The quick brown fox "
    a = open_session(bundle_dir)
    head = a.generate(prompt, 40)
    z = np.linspace(0.5, 1.5, a.svf_z.size).astype(np.float32)
    a.svf_z = z
    out = a.generate(b"", 100)
    b = open_session(bundle_dir)
    b.score(prompt + head)
    b.svf_z = z
    assert b.generate(b"", 100) == out


def test_batched_generation_equals_one_stream_at_a_time(corpus):
    model, patches = micro_model("mag", "entropy", corpus)
    session = open_model_session(model, patching=patches)
    prompts = [corpus[i * 90 : i * 90 + 45] for i in range(3)]
    texts, logprobs = session.generate_batch(prompts, 100, return_logprobs=True)
    for prompt, text, lp in zip(prompts, texts, logprobs):
        one, one_lp = open_model_session(model, patching=patches).generate(prompt, 100, return_logprobs=True)
        assert text == one
        np.testing.assert_allclose(lp, one_lp, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="one length"):
        session.generate_batch([b"ab", b"abc"], 4)


def test_captured_runner_equals_the_plain_graphs(corpus):
    """The CUDA-graph runner's pooled buffers (runtimes/captured.py), run eagerly here: same bytes and
    log-probs as the plain decode graphs, one stream and a batch."""
    from neat_edge.runtimes.torch import torch_decode_graphs

    model, patches = micro_model("mal", "fixed", corpus)
    plain = open_model_session(model)
    pooled = open_model_session(model)
    pooled.decode_graphs = torch_decode_graphs(model, capture=True)
    a, la = plain.generate(corpus[:40], 120, return_logprobs=True)
    b, lb = pooled.generate(corpus[:40], 120, return_logprobs=True)
    assert a == b
    np.testing.assert_array_equal(la, lb)
    prompts = [corpus[i * 50 : i * 50 + 40] for i in range(2)]
    assert pooled.generate_batch(prompts, 60) == plain.generate_batch(prompts, 60)


def test_cpu_rewrite_turns_cache_writes_into_scatters_and_leaves_look_alikes():
    """export/onnx_fusion.py on write_slot's exported form: Where(one-hot of the slot, row, cache) becomes
    ScatterElements with the same values (with and without `enable`); a Where whose row broadcasts over
    the cache is left as it is."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from neat_edge.export.onnx_fusion import fuse_decode_graph

    def graph(row_heads: int) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(np.arange(6, dtype=np.int64), "arange"),
                 numpy_helper.from_array(np.array([1], np.int64), "one"),
                 numpy_helper.from_array(np.array([-1, 1, 6, 1], np.int64), "hit_shape")]
        nodes = [helper.make_node("Unsqueeze", ["slot", "one"], ["slot_1"]),
                 helper.make_node("Equal", ["arange", "slot_1"], ["eq"]),
                 helper.make_node("Unsqueeze", ["enable", "one"], ["enable_1"]),
                 helper.make_node("And", ["eq", "enable_1"], ["hit"]),
                 helper.make_node("Reshape", ["eq", "hit_shape"], ["hit_a"]),
                 helper.make_node("Reshape", ["hit", "hit_shape"], ["hit_b"]),
                 helper.make_node("Where", ["hit_a", "row", "cache"], ["out_a"]),
                 helper.make_node("Where", ["hit_b", "row", "cache"], ["out_b"])]
        io = [helper.make_tensor_value_info("slot", T.INT64, ["batch"]),
              helper.make_tensor_value_info("enable", T.BOOL, ["batch"]),
              helper.make_tensor_value_info("row", T.FLOAT, ["batch", row_heads, 1, 4]),
              helper.make_tensor_value_info("cache", T.FLOAT, ["batch", 3, 6, 4])]
        outs = [helper.make_tensor_value_info(n, T.FLOAT, ["batch", 3, 6, 4]) for n in ("out_a", "out_b")]
        return helper.make_model(helper.make_graph(nodes, "g", io, outs, inits),
                                 opset_imports=[helper.make_opsetid("", 20)])

    rng = np.random.default_rng(0)
    feeds = {"slot": np.array([2, 5], np.int64), "enable": np.array([True, False]),
             "row": rng.standard_normal((2, 3, 1, 4)).astype(np.float32),
             "cache": rng.standard_normal((2, 3, 6, 4)).astype(np.float32)}
    run = lambda m, f: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)  # noqa: E731
    plain = graph(3)
    fused = onnx.ModelProto.FromString(plain.SerializeToString())
    report = fuse_decode_graph(fused)
    assert report["passes"]["scatter_cache_writes"] == 2
    ops = [n.op_type for n in fused.graph.node]
    assert "ScatterElements" in ops and "Where" in ops and ops.count("Equal") == 0  # Where: the enable case only
    for a, b in zip(run(plain, feeds), run(fused, feeds)):
        np.testing.assert_array_equal(a, b)  # the same bits: a copy and one row, either way
    look_alike = graph(1)  # the row broadcasts over the heads: not a one-row write, left alone
    assert fuse_decode_graph(look_alike)["passes"]["scatter_cache_writes"] == 0


def test_in_place_cache_outputs_are_only_those_nothing_reads_later():
    """A cache written by a scatter straight from its input may share the input's buffer (past/present
    sharing) only when every other reader of that input runs before the scatter."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from neat_edge.export.onnx_fusion import in_place_outputs

    def graph(read_after: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("GatherElements", ["cache.x", "index"], ["row_old"], axis=1),
                 helper.make_node("Add", ["row_old", "row"], ["row_new"]),
                 helper.make_node("ScatterElements", ["cache.x", "index", "row_new"], ["next_cache.x"], axis=1)]
        outs = [helper.make_tensor_value_info("next_cache.x", T.FLOAT, [1, 4])]
        if read_after:  # reads the input after the scatter may have written it: not in place
            nodes.append(helper.make_node("Mul", ["cache.x", "next_cache.x"], ["later"]))
            outs.append(helper.make_tensor_value_info("later", T.FLOAT, [1, 4]))
        io = [helper.make_tensor_value_info("cache.x", T.FLOAT, [1, 4]),
              helper.make_tensor_value_info("row", T.FLOAT, [1, 1])]
        return helper.make_model(helper.make_graph(nodes, "g", io, outs,
                                                   [numpy_helper.from_array(np.array([[2]], np.int64), "index")]))

    assert in_place_outputs(graph(False)) == ["next_cache.x"]
    assert in_place_outputs(graph(True)) == []
