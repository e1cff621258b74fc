"""Resumable training: everything a run needs to continue bit-for-bit, next to its checkpoint.

    trainer_state.safetensors   AdamW moments and step per parameter (by name), torch RNG states
    trainer_state.json          step, scheduler position, the data sampler's RNG, loss/eval history

Tensors go through safetensors (never pickle); the rest is plain JSON. train.py writes both files and
the model weights in one fileio.commit_together block, so a run killed mid-save resumes from the
previous save (or, killed after the commit point, from the new one), never from a mix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from neat_edge.errors import NeatError
from neat_edge.fileio import atomic_write, atomic_write_json, recover

STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"
FORMAT = "neat-trainer-state/1"


def has_trainer_state(path: str | Path) -> bool:
    p = Path(path)
    return (p / STATE_TENSORS).is_file() and (p / STATE_JSON).is_file()


def save_trainer_state(out_dir: str | Path, model, optimizer, scheduler, rng: np.random.Generator,
                       progress: dict) -> None:
    """Write the optimizer, scheduler and RNG states plus `progress` (step, histories) to out_dir."""
    out = Path(out_dir)
    names = {id(p): n for n, p in model.named_parameters()}
    by_index = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    opt = optimizer.state_dict()
    tensors = {}
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{by_index[index]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    atomic_write(out / STATE_TENSORS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    atomic_write_json(out / STATE_JSON, {"format": FORMAT, "param_groups": groups, "scheduler": sched,
                                         "numpy_rng": rng.bit_generator.state, **progress})


def load_trainer_state(path: str | Path, model, optimizer, scheduler, rng: np.random.Generator) -> dict:
    """Restore what save_trainer_state wrote into live objects; returns the saved progress dict."""
    path = Path(path)
    recover(path)  # a save killed after its commit point is finished first (fileio.commit_together)
    if not has_trainer_state(path):
        raise NeatError(f"{path} holds no resumable trainer state ({STATE_TENSORS} + {STATE_JSON}); "
                        "it was not written by `neat train`, or by a version before resuming existed")
    try:
        tensors = load_file(str(path / STATE_TENSORS))
        meta = json.loads((path / STATE_JSON).read_text())
    except (SafetensorError, OSError, ValueError) as exc:
        raise NeatError(f"corrupted trainer state in {path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise NeatError(f"{path / STATE_JSON} is not a NEAT trainer state")
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            prefix = f"optim.{names[id(p)]}."
            entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if entry:
                state[index] = entry
            index += 1
    groups = []
    for saved, live in zip(meta["param_groups"], optimizer.state_dict()["param_groups"]):
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
        groups.append({**saved, "params": live["params"]})
    if len(groups) != len(optimizer.param_groups):
        raise NeatError(f"trainer state in {path} does not match this model's optimizer")
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    rng.bit_generator.state = meta["numpy_rng"]
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted((t for t in tensors if t.startswith("rng.cuda.")),
                                              key=lambda t: int(t.rsplit(".", 1)[1]))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return {k: v for k, v in meta.items() if k not in ("format", "param_groups", "scheduler", "numpy_rng")}
