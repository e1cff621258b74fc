"""The training step (training/step.py) and `neat-bench train` (tools/bench_train.py).

The compiled window must be the reference step compiled: the same loss and gradients. On the CPU it is
traced by dynamo + AOTAutograd with the aot_eager backend (inductor's C++ build of a whole window takes
minutes here); the inductor / CUDA-graph kernels are checked against the reference on a GPU by
scripts/gpu_train_check.py (docs/train_bench/check_h200.jsonl)."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from neat_edge.config import preset
from neat_edge.errors import NeatError
from neat_edge.model.checkpoint import build
from neat_edge.training.step import TrainStep, make_adamw, resolve_mode
from neat_edge.training.train import TrainOptions, build_train_step


def _grads(model, mode: str, x):
    opts = TrainOptions(batch_size=x.shape[0], segments=x.shape[1] // model.cfg.segment_len, tbptt=1)
    _, window_loss, optim, step = build_train_step(model, opts)
    if mode != "eager":  # the same TrainStep, its window traced as one graph
        step = TrainStep(window_loss, model.parameters(), optim, 1.0, None, "cpu", mode, step.plan_fn,
                         compile_backend="aot_eager")
    loss, norm = step.forward_backward(x)
    return float(loss), float(norm), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def tiny_and_windows():
    torch.manual_seed(0)
    return build(preset("tiny")).train(), torch.randint(0, 256, (2, 2 * preset("tiny").segment_len))


@pytest.mark.parametrize("mode", ["compile"])
def test_compiled_window_equals_the_reference_step(tiny_and_windows, mode):
    base, x = tiny_and_windows
    torch._dynamo.reset()
    ref_loss, ref_norm, ref = _grads(copy.deepcopy(base), "eager", x)
    loss, norm, grads = _grads(copy.deepcopy(base), mode, x)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert norm == pytest.approx(ref_norm, rel=1e-5)
    assert grads.keys() == ref.keys()
    for name in ref:  # tbptt 1: the second segment's state is detached, its gradients stop there
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def _saved_bytes_and_grads(model, x, budget: float):
    """Bytes the compiled window saves for its backward (what the partitioner keeps) and the gradients."""
    opts = TrainOptions(batch_size=x.shape[0], segments=x.shape[1] // model.cfg.segment_len, tbptt=2)
    _, window_loss, optim, step = build_train_step(model, opts)
    step = TrainStep(window_loss, model.parameters(), optim, 1.0, None, "cpu", "compile", step.plan_fn,
                     compile_backend="aot_eager_decomp_partition", memory_budget=budget)  # the min-cut partitioner
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step.forward_backward(x)
    return sum(saved), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow  # two traces of a whole window with the min-cut partitioner: about a minute on 2 cores
def test_a_memory_budget_saves_fewer_activations_for_the_same_gradients(tiny_and_windows):
    base, x = tiny_and_windows
    torch._dynamo.reset()
    full, ref = _saved_bytes_and_grads(copy.deepcopy(base), x, 1.0)
    torch._dynamo.reset()
    lean, grads = _saved_bytes_and_grads(copy.deepcopy(base), x, 0.2)
    assert lean < 0.8 * full
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(NeatError, match="memory budget"):
        TrainStep(base, base.parameters(), None, 1.0, None, "cpu", "compile", memory_budget=0.0)


def test_a_non_finite_batch_never_reaches_the_weights():
    torch.manual_seed(0)
    model = build(preset("tiny")).train()
    opts = TrainOptions(batch_size=2, segments=1, tbptt=1, step_mode="eager")
    _, _, _, step = build_train_step(model, opts)
    with torch.no_grad():
        model.byte_head.bias[3] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, stepped = step(torch.randint(0, 256, (2, model.cfg.segment_len)))
    assert not stepped and loss != loss  # NaN
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, before[n], equal_nan=True, msg=n)


def test_step_modes_resolve_or_refuse():
    assert resolve_mode("auto", "cpu") == "eager"
    assert resolve_mode("auto", "cuda") == "compile"
    with pytest.raises(NeatError, match="unknown step mode 'regional'"):  # measured and dropped (step.py)
        resolve_mode("regional", "cuda")
    with pytest.raises(NeatError, match="needs --device cuda"):
        resolve_mode("graphs", "cpu")
    with pytest.raises(NeatError, match="unknown step mode"):
        resolve_mode("fast", "cpu")


def test_adamw_is_fused_only_on_cuda():
    opt = make_adamw([{"params": [torch.nn.Parameter(torch.ones(2))]}], 1e-3)
    assert not opt.defaults.get("fused")


def test_peer_is_a_same_size_llama():
    pytest.importorskip("transformers")
    from neat_edge.hf.peer import TOLERANCE, build_peer, llama_parameters, peer_shape
    from neat_edge.model.neat import count_parameters

    for name in ("tiny", "small", "base"):
        n = count_parameters(build(preset(name)))
        shape = peer_shape(n)
        assert abs(shape["parameters"] - n) <= TOLERANCE * n
    peer = build_peer(1_848_500, 256)
    shape = peer.peer_shape
    assert sum(p.numel() for p in peer.parameters()) == shape["parameters"] == llama_parameters(
        shape["hidden"], shape["layers"], shape["intermediate"])
    assert peer.config._attn_implementation == "sdpa" and peer.config.vocab_size == 260


def _bench(*args, tmp_path=None):
    return subprocess.run([sys.executable, "-c", "import sys; sys.argv[0]='neat-bench'; "
                           "from neat_edge.tools.bench_cli import main; main()", "train", *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_neat_bench_train_with_the_peer_on_the_cpu(tmp_path):
    pytest.importorskip("transformers")
    data = tmp_path / "data.txt"
    data.write_bytes(bytes(range(32, 127)) * 400)
    out = tmp_path / "train.json"
    r = _bench("--preset", "tiny", "--batch-size", "2", "--segments", "2", "--tbptt", "2", "--steps", "2",
               "--warmup-steps", "1", "--peer", "--data", str(data), "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    fields = {"bytes_per_s", "step_ms", "peak_memory_gb", "peak_memory_gb_per_mb_batch", "kernels_per_step",
              "compile_s", "model_flops_per_byte", "achieved_tflops", "parameters", "batch_size", "step_mode"}
    for side in ("neat", "peer"):
        assert fields <= report[side].keys(), side
        assert report[side]["bytes_per_s"] > 0 and report[side]["kernels_per_step"] > 0
        assert report[side]["step_ms"]["p90"] >= report[side]["step_ms"]["p50"] > 0
        assert report[side]["window_bytes"] == 256 and report[side]["model_flops_per_byte"] > 1e5
    assert report["neat_over_peer"] == pytest.approx(report["neat"]["bytes_per_s"] / report["peer"]["bytes_per_s"],
                                                     rel=1e-3)
    assert abs(report["peer"]["parameters"] - report["neat"]["parameters"]) <= 0.1 * report["neat"]["parameters"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "graphs"], "needs --device cuda"),
    (["--mode", "quick"], "unknown step mode"),
    (["--preset", "tiny", "--config", "x.json"], "not both"),
    (["--precision", "fp8"], "unknown --precision"),
])
def test_neat_bench_train_refuses_bad_options_in_one_line(args, message):
    r = _bench(*args)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() + r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_the_peer_as_a_byte_model_scores_and_round_trips(tmp_path):
    """PeerByteModel (what scripts/train_peer.py trains through fit): a window scored from BOS; a document
    longer than the context scored once per byte with sliding windows; weights saved and loaded."""
    pytest.importorskip("transformers")
    import math

    from neat_edge.hf.peer import PeerByteModel, PeerConfig, load_peer, save_peer

    model = PeerByteModel(PeerConfig(1_848_500, 32)).eval()
    data = bytes(range(40, 120))
    x = torch.tensor([list(data[:32])])
    with torch.no_grad():
        out, state = model.step(x, model.initial_state(1))
    window_bits = -float(out["byte_logprobs"].gather(-1, x[..., None]).sum()) / math.log(2)
    assert state == {} and model.document_bits(data[:32]) == pytest.approx(window_bits, rel=1e-5)
    # stride = context: back-to-back windows over BOS ‖ data, each byte scored once (window i reads bytes
    # 32i-1 .. 32i+30 to predict 32i .. 32i+31)
    ids = torch.tensor([256, *data])
    manual = 0.0
    with torch.no_grad():
        for i in range(0, len(data), 32):
            chunk = ids[i : i + 33]
            logp = torch.log_softmax(model.llama(input_ids=chunk[None, :-1]).logits[0].float(), -1)
            manual -= float(logp.gather(-1, chunk[1:, None]).sum()) / math.log(2)
    assert model.document_bits(data, stride=32) == pytest.approx(manual, rel=1e-5)
    assert model.document_bits(data) != model.document_bits(data, stride=32)  # more context per byte
    save_peer(model, tmp_path / "peer")
    again = load_peer(tmp_path / "peer")
    assert again.document_bits(data) == pytest.approx(model.document_bits(data), rel=1e-6)
    with pytest.raises(NeatError, match="no readable peer checkpoint"):
        load_peer(tmp_path)
