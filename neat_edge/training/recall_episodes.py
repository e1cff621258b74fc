"""Recall episodes mixed into the training text: something appears, filler follows, the same bytes
appear again, so the next-byte loss rewards whatever carries them across the gap (the Titans memory,
once the gap is beyond attention and the byte context).

A share `fraction` of the training windows carries 1-3 episodes. An episode writes a body at one place
and the same bytes `distance` bytes after its end (the distance of `neat recall`: from the end of the
first occurrence to the start of the repeat), overwriting the text there. Bodies vary in kind:

    random      16-64 bytes of letters+digits, hex, or letters, digits and symbols
    record      `key: value` / `key = value` / `"key": "value"` lines with a random value
    identifier  a random snake_case identifier with a random suffix (`cache_K7fq2x`)
    quoted      a quoted random string
    passage     16-64 bytes of the window's own text, copied later (repeated passages of the corpus)

Both occurrences sit inside one backprop span (min(tbptt, segments) segments), so the write and the
read it should serve are in one truncated-backprop window. Every draw comes from the sampler's own
numpy Generator, which the trainer state saves: a resumed run draws exactly the windows an
uninterrupted one would.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass

import numpy as np

from neat_edge.errors import NeatError
from neat_edge.training.data import ByteCorpus

KINDS = ("random", "record", "identifier", "quoted", "passage")
MIN_BODY, MAX_BODY = 16, 64
MAX_EPISODES = 3
ALPHABETS = [a.encode() for a in (string.ascii_letters + string.digits, "0123456789abcdef",
                                  string.ascii_letters + string.digits + "!#$%&*+-./:;<=>?@^_~")]
KEYS = (b"id", b"key", b"token", b"name", b"path", b"user", b"hash", b"url", b"secret", b"code", b"ref", b"tag")
RECORD_FORMATS = (b"%s: %s\n", b"%s = %s\n", b'"%s": "%s",\n')


@dataclass(frozen=True)
class RecallMix:
    fraction: float  # share of training windows that carry episodes
    min_distance: int
    max_distance: int
    span: int  # bytes of one backprop span: both occurrences of an episode fall inside one

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise NeatError(f"--recall-fraction must be in (0, 1], got {self.fraction}")
        if not 1 <= self.min_distance <= self.max_distance:
            raise NeatError(f"--recall-distances must be A,B with 1 <= A <= B, got {self.min_distance},"
                            f"{self.max_distance}")
        if self.max_distance + 2 * MAX_BODY > self.span:
            raise NeatError(f"--recall-distances up to {self.max_distance} need a backprop span of at least "
                            f"{self.max_distance + 2 * MAX_BODY} bytes; min(--tbptt, --segments) x segment_len "
                            f"is {self.span}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_distances(text: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split(","))
    except ValueError:
        raise NeatError(f"--recall-distances must be two whole numbers A,B (bytes), got '{text}'") from None
    return low, high


def _random_text(rng: np.random.Generator, n: int, alphabet: bytes) -> bytes:
    return np.frombuffer(alphabet, np.uint8)[rng.integers(0, len(alphabet), size=n)].tobytes()


def make_body(rng: np.random.Generator, kind: str) -> bytes:
    """The bytes an episode repeats (not used for `passage`, which copies the window's own text)."""
    n = int(rng.integers(MIN_BODY, MAX_BODY + 1))
    alphabet = ALPHABETS[int(rng.integers(len(ALPHABETS)))]
    if kind == "record":
        key = KEYS[int(rng.integers(len(KEYS)))] + b"_" + _random_text(rng, 3, ALPHABETS[0])
        value = _random_text(rng, max(MIN_BODY - len(key), n - len(key) - 6), alphabet)
        return RECORD_FORMATS[int(rng.integers(len(RECORD_FORMATS)))] % (key, value)
    if kind == "identifier":
        word = KEYS[int(rng.integers(len(KEYS)))] + b"_" + KEYS[int(rng.integers(len(KEYS)))]
        return word + b"_" + _random_text(rng, max(6, n - len(word) - 1), ALPHABETS[0])
    if kind == "quoted":
        return b'"' + _random_text(rng, n - 2, alphabet) + b'"'
    return _random_text(rng, n, alphabet)


def plant_episodes(window: np.ndarray, rng: np.random.Generator, mix: RecallMix) -> list[dict]:
    """Write 1-MAX_EPISODES episodes into `window` (int64 bytes, changed in place); returns where each
    went: {kind, first, repeat, length, distance}. An episode that would overlap an earlier one is
    dropped (its draws are still made, so the stream of draws never depends on the window's text)."""
    spans = max(1, len(window) // mix.span)
    busy = np.zeros(len(window), bool)
    placed = []
    for _ in range(int(rng.integers(1, MAX_EPISODES + 1))):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        body = make_body(rng, kind)
        n = len(body) if kind != "passage" else int(rng.integers(MIN_BODY, MAX_BODY + 1))
        span_start = int(rng.integers(spans)) * mix.span
        span_len = min(mix.span, len(window) - span_start)
        high = min(mix.max_distance, span_len - 2 * n)
        distance = int(rng.integers(mix.min_distance, high + 1)) if high >= mix.min_distance else -1
        first = span_start + int(rng.integers(0, max(1, span_len - 2 * n - distance + 1)))
        repeat = first + n + distance
        if distance < 0 or busy[first : first + n].any() or busy[repeat : repeat + n].any():
            continue
        if kind != "passage":  # a passage repeats the window's own text
            window[first : first + n] = np.frombuffer(body, np.uint8)
        window[repeat : repeat + n] = window[first : first + n]
        busy[first : first + n] = busy[repeat : repeat + n] = True
        placed.append({"kind": kind, "first": first, "repeat": repeat, "length": n, "distance": distance})
    return placed


class RecallEpisodes:
    """A ByteCorpus whose training windows carry recall episodes (held-out data untouched)."""

    def __init__(self, corpus: ByteCorpus, mix: RecallMix):
        self.corpus, self.mix = corpus, mix

    def __getattr__(self, name):  # everything but sample() is the corpus's own
        return getattr(self.corpus, name)

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        windows = self.corpus.sample(rng, batch, length)
        carry = rng.random(batch) < self.mix.fraction
        for row in np.flatnonzero(carry):
            plant_episodes(windows[row], rng, self.mix)
        return windows
