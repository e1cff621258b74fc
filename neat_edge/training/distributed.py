"""Distributed training: torch.distributed around the one trainer loop (train.fit), not a second trainer.

`torchrun --nproc_per_node N -m neat_edge.tools.cli train ...` (or `neat train --nproc N`, which launches
that) starts N ranks; `Ranks.from_env()` joins the process group (NCCL on CUDA, gloo on CPU) and fit()
asks it for the few things that differ from one process:

- data: rank r draws its own windows from its own sampler RNG (rank 0's is the single-process run's, so a
  1-rank run reads today's batches) and walks each window segment by segment with the Titans memory
  carried, detached every --tbptt segments, exactly as one process does; --batch-size is per rank;
- gradients: the loss of a batch is the forward of `WindowLoss` (the trainer's loss_fn over a window from
  a fresh state), wrapped in DistributedDataParallel (`strategy="ddp"`) or FSDP2 `fully_shard`
  (`strategy="fsdp"`, the large presets): one all-reduce (or reduce-scatter) per step averages the ranks'
  gradients, so every rank takes the same optimizer step;
- the same step count everywhere: a --max-minutes stop is agreed by all ranks (any rank over time);
- rank 0 writes every checkpoint and trainer state (full weights and AdamW moments by parameter name,
  whatever the strategy) plus each rank's sampler RNG, so `--resume` works with any rank count: ranks
  that were in the saved run continue their streams, new ranks start fresh ones seeded by (seed, rank, step).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from neat_edge.errors import NeatError

STRATEGIES = ("auto", "ddp", "fsdp")
FSDP_PRESETS = ("base",)  # `auto` shards these (FSDP2); the rest replicate (DDP)


class WindowLoss(nn.Module):
    """The summed loss of a batch of windows [B, n*S] from a fresh state: the trainer's loss_fn as a module
    forward, which is what DistributedDataParallel and fully_shard hook into."""

    def __init__(self, model: nn.Module, loss_fn, fresh_state, tbptt, patches, grad_checkpointing: bool):
        super().__init__()
        self.model = model
        self._loss_fn, self._fresh_state, self._args = loss_fn, fresh_state, (tbptt, patches, grad_checkpointing)

    def forward(self, windows: torch.Tensor, plan: list | None = None) -> torch.Tensor:
        """plan: the windows' per-segment (patch_ids, patch_mask), computed outside a compiled graph
        (training/step.py); None lets the loss compute it from the WindowPatches given at construction."""
        tbptt, patches, grad_checkpointing = self._args
        nll, _ = self._loss_fn(self.model, windows, self._fresh_state(self.model, windows.shape[0]), tbptt,
                               patches if plan is None else plan, grad_checkpointing)
        return nll


@dataclass
class Ranks:
    """Where this process stands in a run: rank, world size, strategy. `Ranks()` is one plain process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"  # none (one process, no process group) | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.strategy != "none"

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    @classmethod
    def from_env(cls, device: str, strategy: str = "auto", preset_name: str = "") -> Ranks:
        """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
        if strategy not in STRATEGIES:
            raise NeatError(f"unknown --strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
        if strategy == "auto":
            strategy = "fsdp" if preset_name in FSDP_PRESETS else "ddp"
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        import torch.distributed as dist

        cuda = device.startswith("cuda")
        if cuda:
            if torch.cuda.device_count() <= local:
                raise NeatError(f"rank {rank} needs cuda:{local}, but {torch.cuda.device_count()} GPU(s) are visible")
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device("cuda", local) if cuda else None)
        return cls(rank, world, local, strategy)

    def device(self, device: str) -> str:
        return f"cuda:{self.local_rank}" if self.active and device == "cuda" else device

    # --- data --------------------------------------------------------------------------------------
    def sampler_rng(self, seed: int, step: int = 0, saved: list | None = None) -> np.random.Generator:
        """This rank's window sampler: rank 0's is the single-process run's (seed alone); rank r > 0 its own
        stream, continued from the saved run when that run had rank r, else fresh from (seed, rank, step)."""
        if self.rank == 0:
            return np.random.default_rng(seed)
        rng = np.random.default_rng([seed, self.rank, step])
        if saved and self.rank - 1 < len(saved):
            rng.bit_generator.state = saved[self.rank - 1]
        return rng

    def rank_rngs(self, rng: np.random.Generator) -> list | None:
        """Every rank's sampler state but rank 0's (saved by rank 0 beside its own), or None in one process."""
        if not self.active:
            return None
        import torch.distributed as dist

        states = [None] * self.world
        dist.all_gather_object(states, rng.bit_generator.state)
        return states[1:]

    # --- gradients ---------------------------------------------------------------------------------
    def wrap(self, module: WindowLoss) -> nn.Module:
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.local_rank] if next(module.parameters()).is_cuda else None
            # heads outside the byte loss (image, dispatch) get no gradient: static_graph learns that once
            return DistributedDataParallel(module, device_ids=ids, static_graph=True)
        if self.strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            cuda = next(module.parameters()).is_cuda
            mesh = init_device_mesh("cuda" if cuda else "cpu", (self.world,))
            # one unit, the whole model: a fresh state reads the layers' M_0 outside their forward, so the
            # weights are gathered for the window's forward, sharded at rest (weights, gradients, AdamW moments)
            return fully_shard(module, mesh=mesh)
        return module

    @contextlib.contextmanager
    def gathered(self, wrapped: nn.Module):
        """Full parameters on every rank for direct calls (held-out evaluation through model.step)."""
        if not self.sharded:
            yield
            return
        wrapped.unshard()
        try:
            yield
        finally:
            wrapped.reshard()

    # --- agreement ---------------------------------------------------------------------------------
    def mean(self, value: torch.Tensor) -> float:
        if not self.active:
            return value.item()
        import torch.distributed as dist

        value = value.detach().float().clone()
        dist.all_reduce(value)
        return value.item() / self.world

    def any(self, flag: bool) -> bool:
        if not self.active:
            return bool(flag)
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def _collective_device(self) -> str:
        import torch.distributed as dist

        return f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"

    def close(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def full_grad_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s total norm as a plain tensor (a DTensor under FSDP2)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class ShardedSaver:
    """FSDP2: the run's full weights and AdamW state gathered from the shards into a plain copy of the model
    (kept on the CPU by every rank), so rank 0 saves and every rank resumes through training/resume.py's one
    format; set_*_state_dict shards what a plain optimizer holds back into the live one."""

    def __init__(self, plain: nn.Module, make_optimizer):
        self.plain = plain
        self.optimizer = make_optimizer(plain)

    def load_into(self, wrapped: nn.Module, optimizer) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        full = _by_fqn(self.plain, self.optimizer, prefix="model.")
        set_optimizer_state_dict(wrapped, optimizer, full,  # parameters the loss never reaches have no moments
                                 options=StateDictOptions(full_state_dict=True, strict=False))

    def gather(self, wrapped: nn.Module, optimizer, is_main: bool) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(wrapped, options=options)  # collective: every rank calls it
        optim = get_optimizer_state_dict(wrapped, optimizer, options=options)
        if not is_main:
            return
        self.plain.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
        names = {n: i for i, (n, _) in enumerate(_ordered_params(self.plain, self.optimizer))}
        state = {names[k.removeprefix("model.")]: v for k, v in optim["state"].items()}
        groups = [{**{k: v for k, v in saved.items() if k != "params"}, "params": live["params"]}
                  for saved, live in zip(optim["param_groups"], self.optimizer.state_dict()["param_groups"])]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})


def _ordered_params(model: nn.Module, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p) for group in optimizer.param_groups for p in group["params"]]


def _by_fqn(model: nn.Module, optimizer, prefix: str) -> dict:
    """A plain optimizer's state keyed by parameter name (torch.distributed.checkpoint's full form)."""
    sd = optimizer.state_dict()
    ordered = _ordered_params(model, optimizer)
    state = {prefix + ordered[i][0]: v for i, v in sd["state"].items()}
    groups, start = [], 0
    for group in sd["param_groups"]:
        n = len(group["params"])
        groups.append({**group, "params": [prefix + name for name, _ in ordered[start:start + n]]})
        start += n
    return {"state": state, "param_groups": groups}


def launch(nproc: int, argv: list[str]) -> int:
    """`neat train --nproc N`: run this command again as N ranks under torchrun (torch.distributed.run,
    --standalone: one host, a free port), with --nproc taken out; returns torchrun's exit status."""
    import subprocess
    import sys

    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "neat_edge.tools.cli", *args]
    return subprocess.call(cmd)
