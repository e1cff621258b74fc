import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from neat_edge.model.checkpoint import load

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the two cores: one intra-op thread each
    import torch

    torch.set_num_threads(1)


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


MAIN_JOB_BUNDLE = Path(__file__).resolve().parent.parent / "exports" / "tiny"  # the README's main job writes it


def _made_by_this_code(bundle: Path, model) -> bool:
    """The main job's bundle is the suite's own when the same sources exported (and verified) the same
    weights: then the suite copies it instead of exporting the default model a second time."""
    import torch

    from neat_edge.bundle import open_bundle
    from neat_edge.errors import NeatError
    from neat_edge.export.bundle import source_digest
    from neat_edge.model.checkpoint import load_checkpoint

    try:
        opened = open_bundle(bundle)  # checksums of every file verified here
        manifest = opened.manifest
        if manifest["tools"].get("neat_edge_source") != source_digest() or not (manifest["parity"] or {}).get("passed"):
            return False
        theirs, ours = load_checkpoint(opened.checkpoint_dir).state_dict(), model.state_dict()
    except (NeatError, OSError, KeyError):
        return False
    return theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, model):
    """One verified ONNX bundle of the default model, shared by the whole suite (a copy of the main job's
    `exports/tiny` when this code made it from this checkpoint, else exported here)."""
    from neat_edge.export.pipeline import export_bundle
    from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT
    from neat_edge.model.entropy import load_patching

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    if MAIN_JOB_BUNDLE.is_dir() and _made_by_this_code(MAIN_JOB_BUNDLE, model):
        shutil.copytree(MAIN_JOB_BUNDLE, out, symlinks=True)
        return out
    export_bundle(model, out, log=lambda *_: None, patching=load_patching(DEFAULT_CHECKPOINT))
    return out


def pytest_terminal_summary(terminalreporter):
    """The number of fuzz cases each category ran (tests/fuzzing.py), for the reliability notes."""
    from tests import fuzzing

    if fuzzing.CASES:
        counts = ", ".join(f"{k} {v:,} ({fuzzing.OUTCOMES[k, 'refused']:,} refused, "
                           f"{fuzzing.OUTCOMES[k, 'accepted']:,} accepted)" for k, v in sorted(fuzzing.CASES.items()))
        terminalreporter.write_line(f"fuzz cases: {counts} (total {sum(fuzzing.CASES.values()):,})")


def pytest_sessionfinish(session):
    """An xdist worker sends its fuzz counts to the controller, which prints the summary."""
    if hasattr(session.config, "workeroutput"):
        from tests import fuzzing

        session.config.workeroutput["fuzz_cases"] = dict(fuzzing.CASES)
        session.config.workeroutput["fuzz_outcomes"] = [[k, o, n] for (k, o), n in fuzzing.OUTCOMES.items()]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    from tests import fuzzing

    output = getattr(node, "workeroutput", {})
    fuzzing.CASES.update(output.get("fuzz_cases", {}))
    for category, outcome, n in output.get("fuzz_outcomes", []):
        fuzzing.OUTCOMES[category, outcome] += n
