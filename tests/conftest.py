import sysconfig
from pathlib import Path

import pytest

from neat_edge.model.checkpoint import load


@pytest.fixture(scope="session")
def corpus() -> bytes:
    """Real text nobody on this project wrote: CPython's LICENSE.txt (≈ 13 KB)."""
    lic = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if lic.is_file():
        return lic.read_bytes()
    import textwrap

    return Path(textwrap.__file__).read_bytes()


@pytest.fixture(scope="session")
def model():
    """The bundled trained tiny model (SVF form, eval mode)."""
    return load("default")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, model):
    """One verified ONNX bundle of the default model, shared by the whole suite."""
    from neat_edge.export.pipeline import export_bundle
    from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT
    from neat_edge.model.entropy import load_patching

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(model, out, log=lambda *_: None, patching=load_patching(DEFAULT_CHECKPOINT))
    return out


def pytest_terminal_summary(terminalreporter):
    """The number of fuzz cases each category ran (tests/fuzzing.py), for the reliability notes."""
    from tests import fuzzing

    if fuzzing.CASES:
        counts = ", ".join(f"{k} {v:,} ({fuzzing.OUTCOMES[k, 'refused']:,} refused, "
                           f"{fuzzing.OUTCOMES[k, 'accepted']:,} accepted)" for k, v in sorted(fuzzing.CASES.items()))
        terminalreporter.write_line(f"fuzz cases: {counts} (total {sum(fuzzing.CASES.values()):,})")
