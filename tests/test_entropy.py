"""The BLT entropy model: causal, streaming, trainable, and exported as its own graph with parity."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from neat_edge.errors import NeatError
from neat_edge.export.onnx import export_entropy_onnx
from neat_edge.model.entropy import EntropyConfig, build_entropy_model, load_entropy_model, save_entropy_model
from neat_edge.training.train import TrainOptions, train_entropy
from tests.test_training import STDLIB_JSON

SMALL = EntropyConfig(context_len=16, segment_len=32, dim=32, layers=1, heads=2)


def test_entropy_is_causal_and_streams(corpus):
    model = build_entropy_model(SMALL).eval()
    data = corpus[:200]
    h = model.entropies(data)
    assert h.shape == (200,) and (h >= 0).all() and (h <= np.log(256) + 1e-4).all()
    changed = bytearray(data)
    changed[100] ^= 0xFF
    h2 = model.entropies(bytes(changed))
    np.testing.assert_array_equal(h[:101], h2[:101])  # entropy of byte i never sees byte i
    assert np.abs(h[101:] - h2[101:]).max() > 0


def test_train_save_load_and_onnx_parity(tmp_path, corpus):
    opts = TrainOptions(steps=25, batch_size=8, segments=2, lr=1e-2, warmup=5, eval_bytes=2048)
    result = train_entropy(SMALL, [STDLIB_JSON], tmp_path / "ent", opts, show_progress=False)
    assert result["loss_curve"][-1] < result["loss_curve"][0] - 0.5
    model = load_entropy_model(tmp_path / "ent")
    entry = export_entropy_onnx(model, tmp_path)
    assert not set(entry["ops"]) & {"Loop", "Scan", "If"}
    sess = ort.InferenceSession(str(tmp_path / "entropy.onnx"), providers=["CPUExecutionProvider"])
    ctx = model.initial_state(1)["byte_context"].numpy()
    got, worst = [], 0.0
    seg = SMALL.segment_len
    for start in range(0, 40 * seg, seg):  # 40 chained segments, context carried
        chunk = np.frombuffer(corpus[start : start + seg], np.uint8).astype(np.int64)[None]
        _, ent, ctx = sess.run(None, {"bytes": chunk, "state.byte_context": ctx})
        got.append(ent[0])
    ref = model.entropies(corpus[: 40 * seg])
    worst = float(np.abs(np.concatenate(got) - ref).max())
    assert worst <= 1e-5


def test_bad_entropy_config_and_missing_checkpoint(tmp_path):
    with pytest.raises(NeatError, match="dim"):
        EntropyConfig(dim=30, heads=4)
    with pytest.raises(NeatError, match="holds no entropy model"):
        load_entropy_model(tmp_path)
    model = build_entropy_model(SMALL)
    save_entropy_model(model, tmp_path / "e")
    (tmp_path / "e" / "entropy_model.safetensors").write_bytes(b"junk")
    with pytest.raises(NeatError, match="corrupted entropy model"):
        load_entropy_model(tmp_path / "e")
    torch.manual_seed(0)
