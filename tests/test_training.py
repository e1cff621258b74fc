import json
import math
import sysconfig
from pathlib import Path

from neat_edge.config import NeatConfig
from neat_edge.model.checkpoint import load
from neat_edge.training.data import ByteCorpus
from neat_edge.training.train import TrainOptions, train

STDLIB_JSON = Path(sysconfig.get_paths()["stdlib"]) / "json"
MICRO = NeatConfig(name="micro", segment_len=32, patch_size=4, context_len=8, d_local=32, local_heads=2,
                   encoder_layers=1, decoder_layers=1, d_model=32, latent_heads=2, latent_layers=1,
                   memory_heads=2, n_experts=2, image_codebook_size=16)


def test_training_learns_and_writes_a_loadable_checkpoint(tmp_path):
    opts = TrainOptions(steps=40, batch_size=8, segments=2, lr=1e-2, warmup=5, eval_bytes=4096)
    result = train(MICRO, [STDLIB_JSON], tmp_path / "ckpt", opts, show_progress=False)
    curve = result["loss_curve"]
    assert curve[-1] < curve[0] - 0.5  # from ~ln(260) = 5.56 nats down
    assert math.isfinite(result["heldout_bits_per_byte"]) and result["heldout_bits_per_byte"] < 8
    log = json.loads((tmp_path / "ckpt" / "train_log.json").read_text())
    assert log["data"]["heldout_bytes"] > 0
    model = load(tmp_path / "ckpt")
    assert model.cfg == MICRO


def test_heldout_split_is_deterministic_and_disjoint():
    a = ByteCorpus.from_paths([STDLIB_JSON])
    b = ByteCorpus.from_paths([STDLIB_JSON])
    assert a.train.tobytes() == b.train.tobytes() and len(a.heldout) > 0
    assert len(a.train) + len(a.heldout) == sum(p.stat().st_size for p in STDLIB_JSON.rglob("*.py")
                                                 if "__pycache__" not in p.parts)
