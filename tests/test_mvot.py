"""MVoT: token discrepancy loss (hand-computed), visual task rules, VQ tokenizer, image tokens in the
stream, interleaved generation, and parity of the exported step graph + image decoder (ONNX)."""

import json
import math

import numpy as np
import pytest
import torch

from neat_edge.config import BOI, EOI, IMAGE_BASE, NeatConfig
from neat_edge.errors import NeatError
from neat_edge.model.checkpoint import build, load_checkpoint, save_checkpoint
from neat_edge.model.mvot import code_discrepancy, mvot_segment_loss, token_discrepancy_loss
from neat_edge.model.vq import (
    ImageDecoderGraph,
    image_size,
    load_tokenizer,
    save_tokenizer,
    to_tensor,
    train_tokenizer,
)
from neat_edge.training import visual_task as task

MICRO = NeatConfig(name="micro", segment_len=32, patch_size=4, context_len=8, d_local=32, local_heads=2,
                   encoder_layers=1, decoder_layers=1, d_model=32, latent_heads=2, latent_layers=1,
                   memory_heads=2, n_experts=2, image_codebook_size=16, image_grid=4, image_code_dim=8)
PARITY_TOL = 1e-4  # fp32 ONNX vs PyTorch: image logits and decoded pixels


def test_token_discrepancy_loss_matches_hand_computation():
    # e^0 = (0,0), e^1 = (1,0), e^2 = (0,2): S[j,k] = mean over the 2 dims of (e^j - e^k)^2
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    S = code_discrepancy(codebook)
    assert torch.allclose(S, torch.tensor([[0.0, 0.5, 2.0], [0.5, 0.0, 2.5], [2.0, 2.5, 0.0]]))
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    targets = torch.tensor([0, 1])
    # position 0: 0·0.2 + 0.5·0.5 + 2·0.3 = 0.85; position 1: 0.5·0.1 + 0·0.1 + 2.5·0.8 = 2.05
    loss = token_discrepancy_loss(probs.log(), targets, S)
    assert loss.item() == pytest.approx(2.9, abs=1e-6)
    # a distribution all on the true code costs nothing; shifting mass to a far code costs more than to a near one
    assert token_discrepancy_loss(torch.tensor([[9.0, -9, -9]]) * 10, torch.tensor([0]), S).item() < 1e-6
    near = token_discrepancy_loss(torch.tensor([[0.0, 0.0, -30.0]]), torch.tensor([0]), S)
    far = token_discrepancy_loss(torch.tensor([[0.0, -30.0, 0.0]]), torch.tensor([0]), S)
    assert near.item() == pytest.approx(0.25, abs=1e-6) and far.item() == pytest.approx(1.0, abs=1e-6)


def test_segment_loss_splits_text_and_image_targets():
    gen = torch.Generator().manual_seed(0)
    byte_lp = torch.log_softmax(torch.randn(1, 4, 260, generator=gen), -1)
    image_logits = torch.randn(1, 4, 3, generator=gen)
    targets = torch.tensor([[65, IMAGE_BASE + 0, IMAGE_BASE + 2, EOI]])
    S = code_discrepancy(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    out = mvot_segment_loss(byte_lp, image_logits, targets, S)
    assert out["text_nll"].item() == pytest.approx(-(byte_lp[0, 0, 65] + byte_lp[0, 3, EOI]).item(), rel=1e-6)
    img_lp = torch.log_softmax(image_logits[0, 1:3], -1)
    assert out["image_nll"].item() == pytest.approx(-(img_lp[0, 0] + img_lp[1, 2]).item(), rel=1e-6)
    want_ld = token_discrepancy_loss(image_logits[0, 1:3], torch.tensor([0, 2]), S)
    assert out["token_discrepancy"].item() == pytest.approx(want_ld.item(), rel=1e-6)
    assert int(out["image_count"]) == 2 and int(out["text_count"]) == 2


def test_visual_task_rules():
    ep = task.Episode.solve(["SFFF", "FHFH", "FFFH", "HFFG"])
    assert ep.actions == [1, 1, 2, 1, 2, 2] and ep.positions[-1] == (3, 3)  # DDRDRR, BFS in action order
    assert task.path_success(ep.desc, ep.actions)
    assert not task.path_success(ep.desc, ep.actions[:-1])  # stops short of the goal
    assert not task.path_success(ep.desc, ep.actions + [0])  # the goal is not the last move
    assert not task.path_success(ep.desc, [2, 1])  # right, down: into the hole at (1,1)
    assert not task.path_success(ep.desc, [])
    assert task.parse_path(b"Path: DD\nmore\nPath: DDRDRR\n") == ep.actions
    assert task.parse_path(b"no answer") is None
    img = task.render(ep.desc, (1, 0), 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[8 + 3, 3] == task.AGENT).all() and (img[8 + 3, 8 + 3] == task.COLORS["H"]).all()
    held = {"".join(e.desc) for e in task.episodes(64, heldout=True)}
    train = {"".join(e.desc) for e in task.episodes(200)}
    assert not held & train and len(train) == 200


def test_episode_tokens_interleave_images():
    ep = task.episodes(1, heldout=True)[0]
    codes = np.arange(len(ep.positions) * 16).reshape(-1, 4, 4) % 16
    tokens, prompt_len = task.episode_tokens(ep, codes)
    starts = np.flatnonzero(tokens == BOI)
    assert len(starts) == len(ep.positions)  # the start state, then one image per move
    for j, s in enumerate(starts):
        assert tokens[s + 17] == EOI and (tokens[s + 1 : s + 17] == IMAGE_BASE + codes[j].reshape(-1)).all()
    assert bytes(tokens[prompt_len - 6 : prompt_len].astype(np.uint8)) == b"Plan:\n"
    text, _ = task.episode_tokens(ep, None)
    assert (text < IMAGE_BASE).all() and BOI not in text


@pytest.fixture(scope="module")
def tokenizer():
    maps = task.episodes(30)
    tok, info = train_tokenizer(MICRO, task.all_states_images(maps, image_size(MICRO)), steps=150, seed=0)
    return tok


def test_tokenizer_codes_cells_and_decodes(tokenizer, tmp_path):
    ep = task.episodes(1, heldout=True)[0]
    images = ep.images(image_size(MICRO))
    codes = tokenizer.encode(to_tensor(images))
    assert codes.shape == (len(images), 4, 4) and codes.dtype == torch.int64
    # one code per cell: cells that look alike get the same code, so only the agent's cells change per move
    changed = (codes[1:] != codes[:-1]).flatten(1).sum(1)
    assert (changed <= 2).all()
    with torch.no_grad():
        pixels = tokenizer.decode(codes)
    assert pixels.shape == (len(images), 32, 32, 3)
    assert float(((pixels - to_tensor(images).permute(0, 2, 3, 1)) ** 2).mean()) < 0.02
    assert torch.equal(ImageDecoderGraph(tokenizer)(codes), pixels)
    save_tokenizer(tokenizer, tmp_path)
    again = load_tokenizer(tmp_path, MICRO)
    assert torch.equal(again.codebook, tokenizer.codebook)


def test_image_tokens_are_embedded_from_the_codebook(tokenizer):
    model = build(MICRO)
    model.set_image_codebook(tokenizer.codebook)
    emb = model.encoder.embed
    tokens = torch.tensor([[65, BOI, IMAGE_BASE + 3, IMAGE_BASE + 5, EOI]])
    out = emb(tokens)
    assert torch.equal(out[0, 0], emb.weight[65]) and torch.equal(out[0, 4], emb.weight[EOI])
    assert torch.allclose(out[0, 2], emb.image_proj(tokenizer.codebook[3]))
    assert torch.allclose(out[0, 3], emb.image_proj(tokenizer.codebook[5]))


def test_checkpoint_without_image_embedding_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    from neat_edge.model.mvot import IMAGE_EMBED_KEYS

    save_checkpoint(build(MICRO), tmp_path)
    tensors = {k: v for k, v in load_file(str(tmp_path / "model.safetensors")).items() if k not in IMAGE_EMBED_KEYS}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = load_checkpoint(tmp_path)
    assert float(model.image_codebook.abs().sum()) == 0.0


@pytest.fixture(scope="module")
def mvot_bundle(tmp_path_factory, tokenizer):
    """A micro model with an image tokenizer, its byte head biased towards BOI so that greedy
    generation draws images, exported to a verified ONNX bundle."""
    from neat_edge.export.pipeline import export_bundle

    model = build(MICRO)
    model.set_image_codebook(tokenizer.codebook)
    with torch.no_grad():
        model.byte_head.bias[BOI] += 40.0
    ckpt = tmp_path_factory.mktemp("mvot") / "ckpt"
    save_checkpoint(model, ckpt)
    save_tokenizer(tokenizer, ckpt)
    out = ckpt.parent / "bundle"
    export_bundle(load_checkpoint(ckpt), out, log=lambda *_: None)
    return out


def _episode_stream(tokenizer, n=3):
    parts = []
    for ep in task.episodes(n, heldout=True):
        codes = tokenizer.encode(to_tensor(ep.images(image_size(MICRO)))).numpy()
        parts.append(task.episode_tokens(ep, codes)[0])
    return np.concatenate(parts)


def test_onnx_parity_image_logits_and_pixels_over_an_interleaved_stream(mvot_bundle, tokenizer):
    from neat_edge.bundle import open_bundle
    from neat_edge.runtimes import open_session
    from neat_edge.runtimes.images import decode_image
    from neat_edge.training.mvot_eval import teacher_forced

    manifest = open_bundle(mvot_bundle).manifest
    assert manifest["images"]["graphs"]["onnx"]["file"] == "image_decoder.onnx"
    assert manifest["parity"]["passed"]
    tokens = _episode_stream(tokenizer)
    assert len(tokens) > 20 * MICRO.segment_len and (tokens >= IMAGE_BASE).sum() > 200
    ort, ref = open_session(mvot_bundle, "onnxruntime"), open_session(mvot_bundle, "torch")
    a, b = teacher_forced(ort, tokens), teacher_forced(ref, tokens)  # state carried over every segment
    assert a.shape == (len(tokens), MICRO.image_codebook_size)
    assert np.abs(a - b).max() <= PARITY_TOL
    g = MICRO.image_grid
    codes = np.random.default_rng(0).integers(0, MICRO.image_codebook_size, (8, g, g))
    for c in codes:  # the decoder graphs themselves, before rounding to uint8
        pa = ort.image_decoder.step({"image_codes": c[None]})["pixels"]
        pb = ref.image_decoder.step({"image_codes": c[None]})["pixels"]
        assert pa.shape == (1, 32, 32, 3) and np.abs(pa - pb).max() <= PARITY_TOL
    a8, b8 = decode_image(ort, codes[0]).astype(int), decode_image(ref, codes[0]).astype(int)
    assert np.abs(a8 - b8).max() <= 1  # uint8 rounding of values 1e-7 apart may land either side of .5


def test_interleaved_generation_same_on_every_backend(mvot_bundle):
    from neat_edge.runtimes import open_session

    runs = []
    for backend in ("onnxruntime", "torch"):
        s = open_session(mvot_bundle, backend)
        items = s.generate(b"FrozenLake", 12, allow_images=True, max_images=2)
        runs.append((items, s.position, s.state))
    items = runs[0][0]
    kinds = [isinstance(x, bytes) for x in items]
    assert kinds == [False, False, True]  # BOI is forced by the bias until max_images, then text
    assert items[0].shape == (32, 32, 3) and items[0].dtype == np.uint8 and len(items[2]) == 12
    assert runs[0][1] == len(b"FrozenLake") + 2 * (MICRO.image_grid ** 2 + 2) + 12
    for x, y in zip(items, runs[1][0]):  # same text; same pixels up to uint8 rounding
        assert x == y if isinstance(x, bytes) else np.abs(x.astype(int) - y.astype(int)).max() <= 1
    for k, v in runs[0][2].items():
        assert np.abs(v - runs[1][2][k]).max() <= PARITY_TOL, k


def test_state_with_pending_image_tokens_round_trips(mvot_bundle, tmp_path):
    from neat_edge.runtimes import open_session

    s = open_session(mvot_bundle, "onnxruntime")
    s._append_known(np.array([65, 66, BOI, IMAGE_BASE + 1, IMAGE_BASE + 2], np.int64))
    s.save_state(tmp_path / "s.safetensors")
    expected = s.next_byte_logprobs()
    t = open_session(mvot_bundle, "onnxruntime")
    t.load_state(tmp_path / "s.safetensors")
    assert np.array_equal(t._pending, s._pending) and t.position == 5
    assert np.array_equal(t.next_byte_logprobs(), expected)
    assert math.isfinite(float(t.score(b"abc").sum()))


def test_run_images_dir_and_mvot_eval_cli(mvot_bundle, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from neat_edge.tools.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["run", str(mvot_bundle), "FrozenLake", "--max-bytes", "4",
                              "--images-dir", str(tmp_path / "imgs"), "--json", str(tmp_path / "run.json")])
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "imgs").glob("*.png"))
    assert len(pngs) == 16 and Image.open(pngs[0]).size == (128, 128)  # max_images 16, 4x enlarged
    assert json.loads((tmp_path / "run.json").read_text())["images"][0].endswith("thought_001.png")
    res = runner.invoke(app, ["mvot-eval", str(mvot_bundle), "--episodes", "1", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "e.json").read_text())
    for key in ("task_success", "image_token_accuracy", "pixel_mse"):
        assert isinstance(result[key], float)
    assert 0.0 <= result["image_token_accuracy"] <= 1.0 and result["tokenizer_pixel_mse"] < 0.05
    res = runner.invoke(app, ["mvot-eval", str(tmp_path / "nope")])
    assert res.exit_code != 0 and isinstance(res.exception, NeatError)  # run_app prints it as one `error:` line


def test_mvot_training_loss_on_text_is_the_chained_nll():
    """fit()'s MVoT loss on a text-only window equals the plain chained NLL (same segments, state, TBPTT);
    with image tokens in the window the image terms join and the image stats are counted."""
    from neat_edge.config import PRESETS
    from neat_edge.training.mvot import mvot_loss
    from neat_edge.training.train import chained_nll

    torch.manual_seed(0)
    model = build(PRESETS["tiny"]).eval()
    seg = model.cfg.segment_len
    windows = torch.randint(0, 256, (2, 3 * seg))
    stats = {}
    loss = mvot_loss(0.0, None, stats)
    got, got_state = loss(model, windows, model.initial_state(2), tbptt=2)
    want, want_state = chained_nll(model, windows, model.initial_state(2), tbptt=2)
    torch.testing.assert_close(got, want)
    assert all(torch.equal(got_state[k], want_state[k]) for k in want_state)
    windows[:, 5:9] = IMAGE_BASE + torch.arange(4)
    S = torch.rand(model.cfg.image_codebook_size, model.cfg.image_codebook_size)
    total, _ = mvot_loss(1.0, S, stats)(model, windows, model.initial_state(2))
    assert total > 0 and stats["image_count"] == 8 and stats["token_discrepancy"] > 0
