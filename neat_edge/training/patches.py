"""Patch boundaries for training windows — the same rules the runtime session applies.

Fixed patching gives every row the same ids. Entropy patching runs the frozen entropy model over
each window (state carried across its segments, as the session does), then the EntropyPatcher with a
patch start forced at every segment start; rows get different patch counts, padded with patch_mask.
"""

from __future__ import annotations

import numpy as np
import torch

from neat_edge.patching import PatcherState, ids_from_starts, segment_patches


class WindowPatches:
    def __init__(self, cfg, entropy_model=None, patcher=None):
        if cfg.patching == "entropy" and (entropy_model is None or patcher is None):
            raise ValueError("entropy patching needs an entropy model and a patcher")
        self.cfg, self.entropy_model, self.patcher = cfg, entropy_model, patcher
        self._fixed: dict = {}  # (batch, device) -> the fixed plan's tensors, made once (every step reads them)

    def __call__(self, windows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """windows [B, n*S] -> per segment (patch_ids [B,S] int64, patch_mask [B,P] float32)."""
        seg, batch, device = self.cfg.segment_len, windows.shape[0], windows.device
        n_seg = windows.shape[1] // seg
        if self.cfg.patching == "fixed":
            key = (batch, str(device))
            if key not in self._fixed:
                ids, mask = segment_patches(seg, self.cfg.patch_size)
                self._fixed[key] = (torch.from_numpy(ids).to(device).expand(batch, -1),
                                    torch.from_numpy(mask).to(device).expand(batch, -1))
            return [self._fixed[key]] * n_seg
        entropy = self._entropies(windows)  # [B, n*S] numpy
        out, prev = [], [None] * batch
        for i in range(n_seg):
            rows = []
            for b in range(batch):
                starts, st = self.patcher.starts(entropy[b, i * seg : (i + 1) * seg], PatcherState(prev_entropy=prev[b]))
                prev[b] = st.prev_entropy
                rows.append(ids_from_starts(starts)[0])
            width = max(int(r[-1]) + 1 for r in rows)
            mask = np.zeros((batch, width), np.float32)
            for b, r in enumerate(rows):
                mask[b, : int(r[-1]) + 1] = 1.0
            out.append((torch.from_numpy(np.stack(rows)).to(device), torch.from_numpy(mask).to(device)))
        return out

    @torch.no_grad()
    def _entropies(self, windows: torch.Tensor) -> np.ndarray:
        model = self.entropy_model.to(windows.device)
        state = model.initial_state(windows.shape[0])
        seg = self.cfg.segment_len  # chunk exactly as the session does: one call per NEAT segment
        parts = []
        for a in range(0, windows.shape[1], seg):
            o, state = model.step(windows[:, a : a + seg], state)
            parts.append(o["entropy"])
        return torch.cat(parts, dim=1).float().cpu().numpy()
