"""MVoT evaluation on held-out FrozenLake maps, through a Session (any backend).

For each held-out episode (maps from seeds never used in training, training/visual_task.py):

  * image_token_accuracy, pixel_mse (teacher forced): the ground-truth interleaved episode is run
    through the step graph, state carried over its segments; at every image position the argmax of
    `image_logits` is compared with the true code, and each image's predicted codes are decoded by the
    image-decoder graph and compared with the rendered ground-truth image (pixels in [0, 1], MSE).
    tokenizer_pixel_mse is the floor: the true codes decoded the same way;
  * task_success (interleaved reasoning): from the prompt (map text + start image + "Plan:"), the
    session generates with images allowed (greedy); success = the moves of its final "Path:" line solve
    the map (visual_task.path_success). task_success_text_only: the same from the text-only prompt with
    images not allowed. free_image_token_accuracy: each generated image against the rendering of the
    state that the model's own moves so far lead to.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from neat_edge.config import IMAGE_BASE
from neat_edge.model.vq import attach_tokenizer, image_size, to_tensor
from neat_edge.training import visual_task as task

MAX_NEW_BYTES = 160  # plenty for a 4x4 plan (a 6-move plan is ~90 bytes of text)


def teacher_forced(session, tokens: np.ndarray) -> np.ndarray:
    """image_logits [len(tokens), K] of a token stream from a fresh stream (the session is untouched)."""
    seg = session.config.segment_len
    state = {k: v.copy() for k, v in session._initial.items()}
    patch_state = {k: v.copy() for k, v in session._initial_patch.items()}
    rows = []
    for a in range(0, len(tokens), seg):
        out, state, patch_state, _ = session.run_segment(tokens[a : a + seg], state, patch_state)
        rows.append(out["image_logits"][0])
    return np.concatenate(rows)


def _moves(text: bytes) -> list[int]:
    return [task.MOVES.index(m.decode()) for m in re.findall(rb"(left|down|right|up) -> ", text)]


def evaluate_session(session, tokenizer, n_episodes: int = 50, modes=("interleaved", "text"), progress=None) -> dict:
    """The MVoT measurements (module docstring) over the first n_episodes held-out maps."""
    from neat_edge.runtimes.images import decode_image, generate_interleaved

    cfg = session.config
    size, g = image_size(cfg), cfg.image_grid
    eps = task.episodes(n_episodes, heldout=True)
    correct = total = 0
    pixel_err, floor_err, free_correct, free_total = [], [], 0, 0
    success = {m: 0 for m in modes}
    for ep in eps:
        truth = ep.images(size)
        with torch.no_grad():
            codes = tokenizer.encode(to_tensor(truth)).numpy()
        tokens, prompt_len = task.episode_tokens(ep, codes)
        is_image = tokens >= IMAGE_BASE
        logits = teacher_forced(session, tokens)
        pred = logits[is_image].argmax(-1)  # the step graph's row i is the distribution of token i
        true = tokens[is_image] - IMAGE_BASE
        correct, total = correct + int((pred == true).sum()), total + len(true)
        for j, (p, t) in enumerate(zip(pred.reshape(-1, g, g), true.reshape(-1, g, g))):
            ref = truth[j].astype(np.float32) / 255.0
            pixel_err.append(float(np.mean((decode_image(session, p).astype(np.float32) / 255.0 - ref) ** 2)))
            floor_err.append(float(np.mean((decode_image(session, t).astype(np.float32) / 255.0 - ref) ** 2)))
        if "interleaved" in modes:
            session.reset()
            items, gen_codes = generate_interleaved(session, tokens[:prompt_len], MAX_NEW_BYTES)
            text = b"".join(x for x in items if isinstance(x, bytes))
            path = task.parse_path(text)
            success["interleaved"] += bool(path is not None and task.path_success(ep.desc, path))
            positions = task.play(ep.desc, _moves(text))[0]
            for j, c in enumerate(gen_codes):  # image j follows move j (image 0: none made yet)
                want = tokenizer.encode(to_tensor(task.render(ep.desc, positions[min(j, len(positions) - 1)],
                                                              size)[None])).numpy()[0]
                free_correct, free_total = free_correct + int((c == want).sum()), free_total + c.size
        if "text" in modes:
            session.reset()
            text_tokens, text_prompt = task.episode_tokens(ep, None)
            out = session.generate(text_tokens[:text_prompt].astype(np.uint8).tobytes(), MAX_NEW_BYTES)
            path = task.parse_path(out)
            success["text"] += bool(path is not None and task.path_success(ep.desc, path))
        if progress:
            progress()
    session.reset()
    n = max(len(eps), 1)
    result = {"episodes": len(eps), "image_token_accuracy": correct / max(total, 1),
              "pixel_mse": float(np.mean(pixel_err)), "tokenizer_pixel_mse": float(np.mean(floor_err))}
    if "interleaved" in modes:
        result["task_success"] = success["interleaved"] / n
        result["free_image_token_accuracy"] = free_correct / max(free_total, 1)
    if "text" in modes:
        result["task_success_text_only"] = success["text"] / n
    return result


def evaluate_visual(model, tokenizer, n_episodes: int = 24) -> dict:
    """evaluate_session on an in-memory PyTorch model (the end of a training run)."""
    from neat_edge.runtimes import open_model_session

    attach_tokenizer(model, tokenizer)
    return evaluate_session(open_model_session(model.eval()), tokenizer, n_episodes)
