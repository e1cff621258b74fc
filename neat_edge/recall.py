"""`neat recall`: does the model recall a string it saw earlier in the stream, beyond attention's reach?

A trial is one document, scored from a fresh stream through the Session API (so every backend runs it):

    lead filler (segment_len .. 2·segment_len − 1 bytes)  S  gap filler (`distance` bytes)  S

S is a random string of `length` (≥ 32, default 32) bytes drawn uniformly from letters and digits (62
symbols, log2 62 = 5.95 bits/byte to a model that knows only the alphabet). The filler is one contiguous
slice of the filler files' bytes (concatenated in the order given, directories expanded) from a random
offset; the lead's random length puts S at a random place in its segment. **Distance** is the number of
bytes between the end of the first occurrence and the start of the repeat (the gap). With a gap of at
least segment_len + context_len bytes no byte of the first occurrence is in the repeat's segment or in
its carried byte context: only the Titans memory (and the one-patch latent carry) can bring S back.

Measured per distance, each with the memory carried and with it reset at every segment boundary (the
ablation of `neat eval --memory reset-each-segment`, same code: evaluation.score_stream):
  repeat_bits_per_byte   bits/byte of the repeat after its first 8 bytes (S[8:])
  first_bits_per_byte    bits/byte of the same bytes at the first occurrence (carried; the no-recall scale)
  exact_match            share of trials where 24 bytes generated greedily after the repeat's first 8
                         bytes equal S[8:32] (the generation resets the memory at boundaries too)
  byte_match             share of those 24 bytes that are right
Every trial's document is drawn from `seed` alone, so both arms (and every backend) see the same bytes.

Distances inside attention (copying, not recall): a trial is `inside_attention` when its whole first
occurrence lies in what the repeat's continuation can attend to — the continuation's own segment and the
context_len bytes carried before it (the local encoder's window). When the first occurrence, the gap and
the repeat with its continuation fit in one segment, the lead is drawn so that they do, and every trial
of that distance is inside; from segment_len + context_len on none is; between, some are. Each row says
`inside_attention` (every trial inside) and `inside_attention_share`, so one table shows copying by
attention beside recall by the memory.
"""

from __future__ import annotations

import math
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError
from neat_edge.evaluation import LN2, greedy_continuation, score_stream

ALPHABET = (string.ascii_letters + string.digits).encode()
PREFIX_BYTES, CONTINUATION_BYTES, MIN_LENGTH = 8, 24, 32
DEFAULT_DISTANCES = (256, 1024, 4096, 16384)
ARMS = {"carry": "carry", "reset": "reset-each-segment"}  # JSON key -> evaluation memory mode
MAX_FILLER_BYTES = 64 << 20  # filler read (trials sample from it): later bytes are not read
MAX_LENGTH, MAX_TRIALS, MAX_DISTANCE = 1 << 16, 1 << 16, MAX_FILLER_BYTES


@dataclass(frozen=True)
class Trial:
    lead: bytes
    needle: bytes
    gap: bytes
    inside_attention: bool = False  # the whole first occurrence is visible to the continuation's attention

    @property
    def prompt(self) -> bytes:
        """The document up to and including the repeat's first PREFIX_BYTES bytes."""
        return self.lead + self.needle + self.gap + self.needle[:PREFIX_BYTES]


def parse_distances(text: str) -> list[int]:
    try:
        distances = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NeatError(f"--distances must be comma-separated whole numbers of bytes, got '{text}'") from None
    if not distances or any(not 1 <= d <= MAX_DISTANCE for d in distances):
        raise NeatError(f"--distances must list byte counts in 1..{MAX_DISTANCE:,}, got '{text[:80]}'")
    if len(set(distances)) != len(distances):
        raise NeatError(f"--distances lists a distance twice: '{text}'")
    return distances


def load_filler(paths, limit: int = MAX_FILLER_BYTES) -> tuple[bytes, int]:
    """The filler files' bytes, concatenated (directories expanded as `neat train --data` does) and cut
    at `limit` bytes (later files are not read once it is reached), and how many files were used."""
    from neat_edge.bounded import read_heads
    from neat_edge.training.data import collect_files

    for p in paths:
        if not Path(p).exists():
            raise NeatError(f"filler not found: {p}")
    return read_heads([f for f, _ in collect_files(paths)], "filler", limit)


def visible_to_attention(first_start: int, predicted: int, segment_len: int, context_len: int) -> bool:
    """Can the byte predicted at stream position `predicted` attend to position `first_start`? Its segment's
    bytes and the context_len bytes carried before that segment are what the local layers see."""
    return first_start >= (predicted // segment_len) * segment_len - context_len


def make_trials(filler: bytes, distances, trials: int, length: int, segment_len: int, seed: int,
                context_len: int = 0):
    """{distance: [Trial] * trials}, all drawn from `seed`. A distance whose whole trial (string, gap,
    repeat and continuation) fits in one segment gets leads that keep it in one (inside attention)."""
    for name, value, low, high in (("--length", length, MIN_LENGTH, MAX_LENGTH), ("--trials", trials, 1, MAX_TRIALS),
                                   ("--seed", seed, 0, (1 << 63) - 1)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            why = " (8 to prompt + 24 to continue)" if name == "--length" else ""
            raise NeatError(f"{name} must be an integer in {low:,}..{high:,}{why}, got {value!r}")
    need = 2 * segment_len - 1 + max(distances)
    if len(filler) < need:
        raise NeatError(f"the filler has {len(filler):,} bytes; distance {max(distances):,} needs at least "
                        f"{need:,} (the gap plus a lead of up to {2 * segment_len - 1} bytes)")
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(ALPHABET, np.uint8)
    out = {}
    for distance in distances:
        out[distance] = []
        for _ in range(trials):
            span = length + distance + PREFIX_BYTES + CONTINUATION_BYTES
            # one draw per trial either way, so the other distances' documents do not change
            lead = int(rng.integers(segment_len, 2 * segment_len - (span - 1 if span <= segment_len else 0)))
            start = int(rng.integers(0, len(filler) - lead - distance + 1))
            piece = filler[start : start + lead + distance]
            needle = rng.choice(alphabet, size=length).tobytes()
            predicted = lead + length + distance + PREFIX_BYTES  # the first byte the continuation predicts
            inside = visible_to_attention(lead, predicted, segment_len, context_len)
            out[distance].append(Trial(piece[:lead], needle, piece[lead:], inside))
    return out


def run_trial(session, trial: Trial, memory: str) -> dict:
    """One trial with the memory carried or reset each segment: bits of the first occurrence and of the
    repeat (both over S[8:]), and the greedy continuation of the repeat's first 8 bytes."""
    session.reset()
    logp = score_stream(session, trial.prompt, memory)
    start = len(trial.lead) + PREFIX_BYTES
    first = -float(np.sum(logp[start : len(trial.lead) + len(trial.needle)], dtype=np.float64)) / LN2
    snap = session.snapshot()
    repeat = -float(np.sum(score_stream(session, trial.needle[PREFIX_BYTES:], memory), dtype=np.float64)) / LN2
    session.restore(snap)
    produced = greedy_continuation(session, CONTINUATION_BYTES, memory)
    target = trial.needle[PREFIX_BYTES : PREFIX_BYTES + CONTINUATION_BYTES]
    n = len(trial.needle) - PREFIX_BYTES
    return {"first": first / n, "repeat": repeat / n, "exact": float(produced == target),
            "bytes": sum(a == b for a, b in zip(produced, target)) / CONTINUATION_BYTES}


def recall_benchmark(session, trials_by_distance: dict, on_trial=None) -> dict:
    """Run every trial in both arms; the report's `distances` list (the JSON schema of `neat recall`)."""
    rows, start = [], time.perf_counter()
    for distance, trials in trials_by_distance.items():
        results = {arm: [] for arm in ARMS}
        for trial in trials:
            for arm, mode in ARMS.items():
                results[arm].append(run_trial(session, trial, mode))
                if on_trial:
                    on_trial()
        mean = {arm: {key: float(np.mean([r[key] for r in results[arm]])) for key in results[arm][0]}
                for arm in ARMS}
        carry, reset = mean["carry"]["repeat"], mean["reset"]["repeat"]
        inside = [t.inside_attention for t in trials]
        rows.append({"distance_bytes": distance, "inside_attention": all(inside),
                     "inside_attention_share": sum(inside) / len(inside),
                     "first_bits_per_byte": mean["carry"]["first"],
                     "repeat_bits_per_byte": {"carry": carry, "reset": reset},
                     "exact_match": {arm: mean[arm]["exact"] for arm in ARMS},
                     "byte_match": {arm: mean[arm]["bytes"] for arm in ARMS},
                     "repeat_carry_over_reset": carry / reset if reset > 0 else float("nan"),
                     "trials": len(trials)})
    return {"distances": rows, "seconds": round(time.perf_counter() - start, 2),
            "string_alphabet": ALPHABET.decode(), "uniform_bits_per_byte": math.log2(len(ALPHABET)),
            "prefix_bytes": PREFIX_BYTES, "continuation_bytes": CONTINUATION_BYTES,
            "distance_definition": "bytes between the end of the first occurrence and the start of the repeat"}
