"""CalibrationPlan: what an int8 export is calibrated on (files, segments, method) and how its accuracy
is measured (held-out corpus), and the plan of the export in progress (`calibrating`). Below the
feed recorders (recording.py) and quantize_graph (plan.py), which both read it."""

from __future__ import annotations

import contextlib
import contextvars
import sysconfig
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neat_edge.calibration.int8 import Int8Options
from neat_edge.calibration.reader import MAX_SEGMENTS, SEGMENTS_PER_FILE

ACCURACY_SEGMENTS = 40  # as the parity check: 5 KiB of the held-out corpus for the tiny model
_ACTIVE: contextvars.ContextVar[CalibrationPlan | None] = contextvars.ContextVar("neat_calibration_plan", default=None)


def default_calibration_files() -> list[Path]:
    """Without --calibration: real code and prose that every Python install has (CPython sources and
    its pydoc topics), never the parity corpus (LICENSE.txt) on which the accuracy delta is measured."""
    std = Path(sysconfig.get_paths()["stdlib"])
    found = [p for p in (Path(textwrap.__file__), std / "argparse.py", std / "difflib.py", std / "pydoc_data" / "topics.py")
             if p.is_file()]
    return found or [Path(textwrap.__file__)]


@dataclass
class CalibrationPlan:
    files: Sequence[str | Path] = field(default_factory=default_calibration_files)
    options: Int8Options = field(default_factory=Int8Options)
    segments_per_file: int = SEGMENTS_PER_FILE
    max_segments: int = MAX_SEGMENTS
    corpus: str | Path | None = None  # held-out text for the accuracy delta (default: the parity corpus)
    accuracy_segments: int = ACCURACY_SEGMENTS
    session_factory: Callable | None = None  # -> fp32 Session over the model (set by export_bundle)
    reports: dict[str, dict] = field(default_factory=dict)  # graph stem -> calibration report

    def settings(self) -> dict:
        return {"files": [str(f) for f in self.files], "segments_per_file": self.segments_per_file,
                "max_segments": self.max_segments, **self.options.to_dict()}

    def manifest_entry(self) -> dict:
        """The bundle manifest's `calibration`: settings and, per int8 graph, its report (accuracy)."""
        return {**self.settings(), "graphs": self.reports}


def active_plan() -> CalibrationPlan | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def calibrating(plan: CalibrationPlan):
    """Make `plan` the one every int8 graph built inside this block uses (targets are built through a
    fixed interface, GraphSource -> artifact, so the export's calibration settings travel here)."""
    token = _ACTIVE.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE.reset(token)
