"""NEAT-Edge: a deployable byte-level model uniting BLT, Titans, Transformer² and MVoT."""

from importlib.metadata import PackageNotFoundError, version

from neat_edge.config import NeatConfig, preset
from neat_edge.errors import NeatError

try:
    __version__ = version("neat-edge")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"


def load(path_or_preset="default", svf: bool = True):
    """Return the PyTorch NeatModel for a checkpoint dir, a preset ("tiny", "small", "base") or "default"."""
    from neat_edge.model.checkpoint import load as _load

    return _load(path_or_preset, svf=svf)


__all__ = ["NeatConfig", "NeatError", "load", "preset", "__version__"]
