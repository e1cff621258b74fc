"""numpy feeds handed to PyTorch: as tensors on a device, with the strides of a fresh array. Below the
PyTorch backend (torch.py) and the pooled decode runner (captured.py), which both feed graphs this way."""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(value, device) -> torch.Tensor:
    """A feed (numpy, or a tensor some decode graph left on the device) as a tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return torch.from_numpy(canonical(value)).to(device)


def canonical(a: np.ndarray) -> np.ndarray:
    """`a` with the strides of a fresh C-order array. A state output that is a view (a [1, W] slice) is
    "contiguous" to numpy and torch alike whatever its size-1 dimension's stride says, but torch.compile
    guards on that stride: fed back as the next step's input it forced a second compilation."""
    a = np.ascontiguousarray(a)
    strides, step = [], a.itemsize
    for size in reversed(a.shape):
        strides.append(step)
        step *= size
    return a if a.strides == tuple(reversed(strides)) else a.copy()
