"""MAC, MAG and MAL: each exports to a loop-free ONNX step graph with chained-segment parity."""

import onnx
import pytest
import torch

from neat_edge.config import NeatConfig
from neat_edge.export.pipeline import export_bundle
from neat_edge.model.checkpoint import build
from neat_edge.model.svf import convert_to_svf
from neat_edge.model.titans import NeuralMemory


def micro(arch: str, window: int = 0, chunks: int = 1) -> NeatConfig:
    return NeatConfig(name=f"micro-{arch}", segment_len=32, patch_size=4, context_len=8, d_local=32, local_heads=2,
                      encoder_layers=1, decoder_layers=1, d_model=48, latent_heads=2, latent_layers=2,
                      memory_heads=2, memory_arch=arch, attn_window=window, memory_chunks=chunks, n_experts=2,
                      image_codebook_size=16)


def randomized(cfg: NeatConfig):
    """A model whose memory is doing real work: random conv taps and a large memory step."""
    model = build(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.latent.layers:
            layer.memory.conv_weight.add_(0.3 * torch.randn(layer.memory.conv_weight.shape, generator=gen))
            layer.memory.gate_theta.bias.fill_(2.0)
    convert_to_svf(model)
    return model.eval()


@pytest.mark.parametrize("arch, window, chunks", [("mac", 0, 1), ("mac", 0, 3), ("mag", 3, 2), ("mal", 5, 4)])
def test_variant_exports_with_chained_parity(arch, window, chunks, tmp_path, corpus):
    """Several memory chunks per segment (a fixed count, the patch axis dynamic) stay loop-free too."""
    model = randomized(micro(arch, window, chunks))
    manifest = export_bundle(model, tmp_path / arch, corpus=None, segments=40, log=lambda *_: None,
                             decode=False)  # the step graph; decode graphs: tests/test_decoding.py
    parity = manifest["parity"]
    assert parity["passed"] and parity["reference"]["segments"] >= 32
    assert manifest["decode"] is None and "decode" not in parity  # --no-decode: a bundle for scoring
    assert parity["max_abs_logprob_diff"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / arch / "step.onnx")).graph.node}
    assert not ops & {"Loop", "Scan", "If"}
    names = [t["name"] for t in manifest["graphs"]["onnx"]["inputs"]]
    assert ("state.memory.1.conv_out" in names) == (arch == "mac")


@pytest.mark.parametrize("arch", ["mac", "mag", "mal"])
def test_memory_state_changes_predictions(arch, corpus):
    """The memory really carries information: resetting it changes the next segment's log-probs."""
    model = randomized(micro(arch))
    from neat_edge.runtimes import open_model_session

    a = open_model_session(model)
    a.score(corpus[:256])
    b = open_model_session(model)
    b.score(corpus[:256])
    fresh = {k: v for k, v in b._initial.items() if k.startswith("memory.")}
    b.state.update({k: v.copy() for k, v in fresh.items()})
    assert abs(a.score(corpus[256:288]) - b.score(corpus[256:288])).max() > 1e-4


def test_neural_memory_forward_streams():
    """forward(x) equals forward(x[:a]) then forward(x[a:], state) (conv history and memory carried)."""
    torch.manual_seed(0)
    mem = NeuralMemory(32, heads=4, depth=2, chunk_size=8)
    with torch.no_grad():
        mem.conv_weight.add_(0.3 * torch.randn_like(mem.conv_weight))
    x = torch.randn(2, 40, 32)
    y, state = mem(x)
    y1, s1 = mem(x[:, :16])
    y2, s2 = mem(x[:, 16:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    for a, b in zip(s2["weights"], state["weights"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_memory_arch():
    from neat_edge.errors import NeatError

    with pytest.raises(NeatError, match="memory_arch"):
        micro("mlp")
