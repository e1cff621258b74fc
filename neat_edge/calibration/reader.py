"""Calibration data: the step graph's real inputs, recorded by running byte files through a Session.

The state inputs (Titans memory weights and momentum, byte context, latent carry) are only realistic
after a stream has run for a while: the memory of segment k is M_0 moved by k test-time steps (Titans
Eq 13-14). So the reader does not sample segments independently: every file is one stream, cut into
segments, run through a session with its state carried, and each step's feeds (the exact dict the
backend receives) are what calibration sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from neat_edge.bounded import read_head
from neat_edge.errors import NeatError

SEGMENTS_PER_FILE = 16  # the stream's memory has moved far from M_0 by then, and files stay diverse
MAX_SEGMENTS = 64
# Only the first segments of each file are ever run (16 x segment_len: 8 KB for the largest preset), and
# at most MAX_SEGMENTS in all: each file is read that far and no further, and reading stops in time.
MAX_FILE_BYTES = 1 << 20
MAX_FILES = 4096


def read_calibration_files(files: Sequence[str | Path], per_file: int = MAX_FILE_BYTES) -> list[tuple[str, bytes]]:
    """(name, first `per_file` bytes) of every file, at most MAX_FILES of them; a directory contributes
    its files (sorted). One-line errors."""
    paths: list[Path] = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            paths.append(p)
        else:
            raise NeatError(f"calibration file not found: {p}")
    found = [(str(q), read_head(q, "calibration file", per_file)) for q in paths[:MAX_FILES]]
    found = [(name, data) for name, data in found if data]
    if not found:
        raise NeatError("the calibration files hold no bytes")
    return found


class RecordingBackend:
    """A Backend that records every feed dict it is given, then runs the wrapped backend."""

    def __init__(self, inner, sink: list):
        self.inner, self.sink = inner, sink
        self.name, self.spec = inner.name, inner.spec

    def step(self, feeds):
        self.sink.append({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return self.inner.step(feeds)


def stream_feeds(session, data: bytes, segments: int) -> Iterator[dict[str, np.ndarray]]:
    """The feeds of the first `segments` full segments of `data` on a fresh stream of `session`
    (state carried from segment to segment), yielded one at a time."""
    seg_len = session.config.segment_len
    session.reset()
    inner, sink = session.backend, []
    session.backend = RecordingBackend(inner, sink)
    try:
        for k in range(min(segments, len(data) // seg_len)):
            session.score(data[k * seg_len : (k + 1) * seg_len])  # one full segment: one committed step
            yield from sink
            sink.clear()
    finally:
        session.backend = inner


class StreamCalibrationReader(CalibrationDataReader):
    """onnxruntime.quantization's CalibrationDataReader over real byte files: each file is one stream
    run through a session (state carried), each segment step's inputs are one calibration sample.

    session_factory() returns a Session (usually fp32 PyTorch, `open_model_session`); feeds are
    produced lazily as ONNX Runtime asks for them, and rewind() starts over (the same samples)."""

    def __init__(self, session_factory: Callable, files: Sequence[str | Path],
                 segments_per_file: int = SEGMENTS_PER_FILE, max_segments: int = MAX_SEGMENTS,
                 input_names: Sequence[str] | None = None):
        self.session_factory = session_factory
        self.files = read_calibration_files(files)
        self.segments_per_file, self.max_segments = segments_per_file, max_segments
        self.input_names = None if input_names is None else set(input_names)
        self._session = None
        self.rewind()

    def _samples(self) -> Iterator[dict[str, np.ndarray]]:
        if self._session is None:
            self._session = self.session_factory()
        produced = 0
        for _, data in self.files:
            for feeds in stream_feeds(self._session, data, self.segments_per_file):
                if produced == self.max_segments:
                    return
                produced += 1
                yield feeds if self.input_names is None else {k: v for k, v in feeds.items() if k in self.input_names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._samples()

    def all_feeds(self) -> list[dict[str, np.ndarray]]:
        """Every sample, from the start (rewinds)."""
        self.rewind()
        feeds = list(self._it)
        self.rewind()
        if not feeds:
            raise NeatError("the calibration files are shorter than one segment: give longer files")
        return feeds
