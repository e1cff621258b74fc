"""Parity of exported artifacts against PyTorch: the same bytes scored as one stream, state carried
across every segment, compared position by position."""

from __future__ import annotations

import math
import sysconfig
import textwrap
from pathlib import Path

import numpy as np

from neat_edge.bounded import read_head
from neat_edge.errors import NeatError
from neat_edge.runtimes.session import Session

DEFAULT_TOLERANCE = 1e-4  # max |Δ log-prob| of an fp32 graph
BPB_TOLERANCE = 0.01  # |Δ bits/byte| of a reduced-precision graph (fp16, int8)
LN2 = math.log(2.0)
MAX_CORPUS_BYTES = 64 << 20  # a whole corpus (no --segments) is read into memory: at most this much


def default_corpus() -> tuple[bytes, str]:
    """Real text nobody on this project wrote and every Python install has: CPython's LICENSE.txt
    (or, where a distribution strips it, the source of the textwrap module)."""
    lic = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    src = lic if lic.is_file() else Path(textwrap.__file__)
    return read_head(src, "corpus", MAX_CORPUS_BYTES), str(src)


def read_corpus(path: str | Path | None, segments: int | None, segment_len: int) -> tuple[bytes, str]:
    """The corpus's first `segments` segments (only those bytes are read), or the whole corpus (at
    most MAX_CORPUS_BYTES: a larger one is refused unread, pass --segments)."""
    if segments is not None and (not isinstance(segments, int) or isinstance(segments, bool) or segments < 1):
        raise NeatError("--segments must be an integer >= 1")
    limit = segments * segment_len if segments is not None else MAX_CORPUS_BYTES
    if path is None:
        data, name = default_corpus()
    else:
        p = Path(path)
        if not p.exists():
            raise NeatError(f"corpus file not found: {p}")
        if p.is_dir():
            raise NeatError(f"corpus {p} is a directory, not a file")
        if segments is None and p.is_file() and p.stat().st_size > limit:
            raise NeatError(f"corpus {p} is refused: {p.stat().st_size:,} bytes, at most {limit:,} are scored "
                            "whole (pass --segments N to use its start)")
        data, name = read_head(p, "corpus", limit), str(p)
    data = data[:limit]
    if not data:
        raise NeatError(f"corpus {name} is empty")
    return data, name


def bits_per_byte(logp: np.ndarray) -> float:
    return float(-logp.astype(np.float64).mean() / LN2)


def state_max_rel_diff(a: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, r in ref.items():
        r64, a64 = r.astype(np.float64), a[name].astype(np.float64)
        worst = max(worst, float(np.abs(a64 - r64).max() / max(np.abs(r64).max(), 1e-12)))
    return worst


def parity_report(reference: Session, candidates: dict[str, Session], data: bytes,
                  precisions: dict[str, str] | None = None) -> dict:
    """Every candidate against the reference on the same stream. Per backend: max |Δ log-prob| (of
    the actual bytes, and over every byte value), bits/byte and its delta, top-1 agreement, and the
    state drift (max relative difference of the carried state) after all full segments."""
    ref_lp, ref_rows = reference.score_with_distributions(data)
    ref_bpb = bits_per_byte(ref_lp)
    seg = reference.config.segment_len
    report = {
        "reference": {"backend": reference.backend.name, "bits_per_byte": bits_per_byte(ref_lp),
                      "bytes": len(data), "segments": -(-len(data) // seg), "state_drift_segments": len(data) // seg,
                      "patching": reference.patches.kind, "mean_patch_length": reference.mean_patch_length,
                      "latent_steps_per_kb": 1024 / reference.mean_patch_length},
        "backends": {},
    }
    for name, session in candidates.items():
        lp, rows = session.score_with_distributions(data)
        report["backends"][name] = {
            "max_abs_logprob_diff": float(np.abs(lp.astype(np.float64) - ref_lp).max()),
            "max_abs_logprob_diff_all_bytes": float(np.abs(rows[:, :256].astype(np.float64)
                                                           - ref_rows[:, :256]).max()),
            "bits_per_byte": bits_per_byte(lp),
            "bits_per_byte_delta": bits_per_byte(lp) - ref_bpb,
            "top1_agreement": float((rows.argmax(-1) == ref_rows.argmax(-1)).mean()),
            "state_max_rel_diff": state_max_rel_diff(session.state, reference.state),
            "state_drift_segments": len(data) // seg,
            "mean_patch_length": session.mean_patch_length,
            "precision": (precisions or {}).get(name, "fp32"),
        }
    return report


def backend_passed(result: dict, tolerance: float = DEFAULT_TOLERANCE, bpb_tolerance: float = BPB_TOLERANCE) -> bool:
    """fp32 graphs must match log-prob by log-prob; fp16 / int8 graphs must keep bits/byte."""
    if result.get("precision", "fp32") == "fp32":
        return result["max_abs_logprob_diff"] <= tolerance
    return abs(result["bits_per_byte_delta"]) <= bpb_tolerance


DECODE_BYTES = 256  # greedy bytes generated through the decode graphs (2 segment boundaries of the tiny)


def decode_parity_report(reference: Session, candidates: dict[str, Session], data: bytes, n_bytes: int = DECODE_BYTES,
                         precisions: dict[str, str] | None = None) -> dict:
    """Incremental decoding against the segment step: each session (the reference too) generates n_bytes
    greedily through its decode graphs after a prompt that ends mid-segment; its log-probs are compared
    with the reference's segment step scoring the same prompt + bytes in a fresh stream. Also whether it
    generated the reference's bytes. Sessions without decode graphs are left out."""
    seg = reference.config.segment_len
    prompt = data[: seg + seg // 2]

    def segment_scores(generated: bytes) -> np.ndarray:
        reference.reset()
        decode, reference.decode_graphs = reference.decode_graphs, None  # the segment step alone
        try:
            return reference.score(prompt + generated)[len(prompt):].astype(np.float64)
        finally:
            reference.decode_graphs = decode

    report = {"prompt_bytes": len(prompt), "bytes": n_bytes, "backends": {}}
    reference.reset()
    ref_bytes, ref_lp = reference.generate(prompt, n_bytes, return_logprobs=True)
    report["reference"] = {"backend": reference.backend.name,
                           "max_abs_logprob_diff": float(np.abs(ref_lp - segment_scores(ref_bytes)).max())}
    for name, session in {"reference": reference, **candidates}.items():
        if session.decode_graphs is None or name == "reference":
            continue
        session.reset()
        out, lp = session.generate(prompt, n_bytes, return_logprobs=True)
        teacher = segment_scores(out)
        report["backends"][name] = {
            "max_abs_logprob_diff": float(np.abs(lp - teacher).max()),
            "bits_per_byte_delta": bits_per_byte(lp) - bits_per_byte(teacher),
            "same_bytes_as_reference": out == ref_bytes,
            "precision": (precisions or {}).get(name, "fp32"),
        }
    return report
