"""The feeds a GraphSource is calibrated on (GraphSource.calibrate): the step graph's inputs and the decode
graphs' inputs over the calibration files of the export in progress (settings.active_plan) or the
defaults, each file one stream through a session over the model (state and caches carried)."""

from __future__ import annotations

import numpy as np

from neat_edge.calibration.reader import StreamCalibrationReader, read_calibration_files
from neat_edge.calibration.settings import CalibrationPlan, active_plan


def record_step_feeds(model, patching=None) -> list[dict[str, np.ndarray]]:
    """The step graph's inputs over the calibration files, each file one stream (state carried)."""
    from neat_edge.runtimes import open_model_session

    plan = active_plan() or CalibrationPlan()
    reader = StreamCalibrationReader(lambda: open_model_session(model, patching=patching), plan.files,
                                     plan.segments_per_file, plan.max_segments)
    return reader.all_feeds()


DECODE_STRIDE = {"decode_byte": 16, "decode_patch": 4, "entropy_decode_byte": 16}  # spread over the files


def decode_calibration(model, patching=None):
    """A function giving the decode graphs' inputs over the calibration files (graph name -> feeds),
    recorded once, on first use: each file one stream, its bytes fed one by one through a session's
    decode graphs (teacher forcing), state and caches carried."""
    recorded: dict[str, list] = {}

    def record() -> dict[str, list]:
        if recorded:
            return recorded
        from neat_edge.runtimes import open_model_session

        plan = active_plan() or CalibrationPlan()
        session = open_model_session(model, patching=patching)
        graphs = session.decode_graphs
        run = graphs.run

        calls: dict[str, int] = {}

        def recording(name, feeds):  # every STRIDE-th call of a graph, at most max_segments per graph
            out = run(name, feeds)
            calls[name] = calls.get(name, 0) + 1
            kept = recorded.setdefault(name, [])
            if (calls[name] - 1) % DECODE_STRIDE.get(name, 1) == 0 and len(kept) < plan.max_segments:
                spec = (graphs.graphs.get(name) or graphs.entropy[name]).spec
                kept.append({n: np.ascontiguousarray(feeds[n]) for n in spec.input_names})
            return out

        graphs.run = recording
        seg = model.cfg.segment_len
        for _, data in read_calibration_files(plan.files):
            session.reset()
            session.next_byte_logprobs()  # decode_start
            for byte in data[: plan.segments_per_file * seg]:
                session._append_known(bytes([byte]))
            if all(len(recorded.get(n, [])) >= plan.max_segments for n in ("decode_byte", "decode_patch")):
                break
        return recorded

    return record
