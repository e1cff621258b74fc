"""NEAT-Edge: a deployable byte-level model uniting BLT, Titans, Transformer² and MVoT.

The package's names are loaded on first use: every CLI start imports this package before its own
Ctrl-C handling is in place (neat_edge/tools/__init__.py), so it imports nothing itself."""

_LAZY = {"NeatConfig": ("neat_edge.config", "NeatConfig"), "preset": ("neat_edge.config", "preset"),
         "NeatError": ("neat_edge.errors", "NeatError")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("neat-edge")
        except PackageNotFoundError:  # running from a source tree
            value = "0.1.0"
    else:
        raise AttributeError(f"module 'neat_edge' has no attribute {name!r}")
    globals()[name] = value
    return value


def load(path_or_preset="default", svf: bool = True):
    """Return the PyTorch NeatModel for a checkpoint dir, a preset ("tiny", "small", "base") or "default"."""
    from neat_edge.model.checkpoint import load as _load

    return _load(path_or_preset, svf=svf)


__all__ = ["NeatConfig", "NeatError", "load", "preset", "__version__"]
