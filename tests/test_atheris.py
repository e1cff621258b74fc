"""Coverage-guided fuzzing with atheris (libFuzzer) of the byte-level readers, in the slow suite: each
target runs in its own process (tests/atheris_targets.py) and must end with no crash. Skipped where
atheris is not installed (`pip install -e ".[fuzz]"`)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzzing import CASES

pytest.importorskip("atheris")
ROOT = Path(__file__).resolve().parent.parent
CATEGORY = {"manifest": "bundles", "state": "states", "expert": "experts"}


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(CATEGORY))
def test_atheris(bundle_dir, tmp_path, target):
    proc = subprocess.run([sys.executable, "-m", "tests.atheris_targets", target, str(bundle_dir), str(tmp_path),
                           "-runs=10000", "-seed=20240611"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert proc.returncode == 0 and done, proc.stderr[-4000:]
    CASES[CATEGORY[target]] += int(done.group(1))
