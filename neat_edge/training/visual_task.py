"""The MVoT visual task: FrozenLake grid worlds solved step by step, text interleaved with grid images.

Maps come from gymnasium (`generate_random_map`, which guarantees a path exists) and are stepped with
gymnasium's own FrozenLake environment (not slippery), so moves, holes and the goal follow its rules.
An episode (bytes, with each grid image as BOI, its VQ codes as image tokens, EOI):

    FrozenLake 4x4 in pictures (S start, F ice, H hole, G goal):      ("in pictures" only when interleaved)
    SFFF
    FHFH
    FFFH
    HFFG
    <image of the start state>          (interleaved episodes only)
    Plan:
    down -> 1,0
    <image after the move>              (interleaved episodes only)
    ...
    Path: DDRRDR
    EOS

The prompt is everything up to "Plan:\n" (a bytes prompt of the header and map is enough for `neat run`:
the model then draws the start state itself); the solution is a shortest path (breadth-first search, moves
tried in gymnasium's action order). Success (`path_success`): the moves of the final "Path:" line,
played in the environment, end on the goal with the last move and never enter a hole on the way.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import numpy as np

from neat_edge.config import BOI, EOI, EOS, IMAGE_BASE

MAP_SIZE = 4
MOVES = ("left", "down", "right", "up")  # gymnasium FrozenLake action ids 0..3
LETTERS = "LDRU"
DELTAS = ((0, -1), (1, 0), (0, 1), (-1, 0))
MAX_PATH = 2 * MAP_SIZE * MAP_SIZE  # a generated path longer than this is not played
LEGEND = "(S start, F ice, H hole, G goal):\n"
HEADER = f"FrozenLake {MAP_SIZE}x{MAP_SIZE} {LEGEND}"
VISUAL_HEADER = f"FrozenLake {MAP_SIZE}x{MAP_SIZE} in pictures {LEGEND}"  # the cue to think in pictures
HELDOUT_SEED_BASE = 1_000_000  # held-out maps come from seeds >= this, and never appear in training

COLORS = {"F": (205, 232, 250), "S": (150, 215, 150), "G": (250, 205, 60), "H": (25, 45, 95)}
AGENT, GRID_LINE = (215, 40, 40), (150, 180, 210)


def make_map(seed: int) -> list[str]:
    from gymnasium.envs.toy_text.frozen_lake import generate_random_map

    return generate_random_map(size=MAP_SIZE, p=0.8, seed=seed)


def _env(desc: list[str]):
    from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv

    return FrozenLakeEnv(desc=desc, is_slippery=False)


def shortest_path(desc: list[str]) -> list[int]:
    """Breadth-first search over non-hole cells from S to G; moves tried in action order."""
    n = len(desc)
    start = next((r, c) for r in range(n) for c in range(n) if desc[r][c] == "S")
    prev = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if desc[cell[0]][cell[1]] == "G":
            path = []
            while prev[cell] is not None:
                cell, action = prev[cell]
                path.append(action)
            return path[::-1]
        for action, (dr, dc) in enumerate(DELTAS):
            r, c = cell[0] + dr, cell[1] + dc
            if 0 <= r < n and 0 <= c < n and (r, c) not in prev and desc[r][c] != "H":
                prev[(r, c)] = (cell, action)
                queue.append((r, c))
    raise ValueError("map has no path from S to G")


def play(desc: list[str], actions: list[int]) -> tuple[list[tuple[int, int]], bool, bool]:
    """Step gymnasium's FrozenLake with `actions`: (positions after reset and after each move played,
    reached the goal, fell into a hole). Stops at the first terminal state."""
    env = _env(desc)
    n = len(desc)
    state, _ = env.reset(seed=0)
    positions, goal, hole = [divmod(int(state), n)], False, False
    for action in actions:
        state, reward, terminated, _, _ = env.step(int(action))
        positions.append(divmod(int(state), n))
        if terminated:
            goal, hole = reward > 0, reward <= 0
            break
    env.close()
    return positions, goal, hole


def path_success(desc: list[str], actions: list[int]) -> bool:
    """The task's success: a non-empty path of at most MAX_PATH moves whose last move lands on G,
    without entering a hole before (gymnasium ends an episode at a hole or at the goal)."""
    if not actions or len(actions) > MAX_PATH:
        return False
    positions, goal, _ = play(desc, actions)
    return goal and len(positions) == len(actions) + 1


def parse_path(text: bytes) -> list[int] | None:
    """The moves of the last "Path: ..." line of generated text (None if there is none)."""
    found = re.findall(rb"Path: ([LDRU]*)", text)
    return [LETTERS.index(chr(ch)) for ch in found[-1]] if found else None


def render(desc: list[str], agent: tuple[int, int], size: int) -> np.ndarray:
    """The grid state as a uint8 RGB image [size, size, 3]: cells by kind, a grid line, the agent as a
    red square in its cell."""
    n = len(desc)
    cell = size // n
    img = np.zeros((size, size, 3), np.uint8)
    for r in range(n):
        for c in range(n):
            block = img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
            block[:] = GRID_LINE
            block[1:, 1:] = COLORS[desc[r][c]]
    r, c = agent
    inset = cell // 4
    img[r * cell + inset : (r + 1) * cell - inset + 1, c * cell + inset : (c + 1) * cell - inset + 1] = AGENT
    return img


@dataclass
class Episode:
    desc: list[str]
    actions: list[int]
    positions: list[tuple[int, int]]  # start, then after each move

    @classmethod
    def solve(cls, desc: list[str]) -> Episode:
        actions = shortest_path(desc)
        positions, goal, _ = play(desc, actions)
        assert goal, "a shortest path must reach the goal"
        return cls(desc, actions, positions)

    def images(self, size: int) -> np.ndarray:
        return np.stack([render(self.desc, p, size) for p in self.positions])

    def prompt_text(self, visual: bool = False) -> bytes:
        return ((VISUAL_HEADER if visual else HEADER) + "".join(row + "\n" for row in self.desc)).encode()

    def step_text(self, i: int) -> bytes:
        r, c = self.positions[i + 1]
        return f"{MOVES[self.actions[i]]} -> {r},{c}\n".encode()

    def answer_text(self) -> bytes:
        return ("Path: " + "".join(LETTERS[a] for a in self.actions) + "\n").encode()


def image_tokens(codes: np.ndarray) -> list[int]:
    """One image in the stream: BOI, its codes (row-major) as image tokens, EOI, newline."""
    return [BOI, *(IMAGE_BASE + int(k) for k in np.asarray(codes).reshape(-1)), EOI, ord("\n")]


def episode_tokens(ep: Episode, codes: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(tokens of the whole episode, length of its prompt). codes [len(positions), g, g] makes it
    interleaved (an image after the map and after every move); None makes it text only."""
    toks = list(ep.prompt_text(visual=codes is not None))
    if codes is not None:
        toks += image_tokens(codes[0])
    toks += list(b"Plan:\n")
    prompt_len = len(toks)
    for i in range(len(ep.actions)):
        toks += list(ep.step_text(i))
        if codes is not None:
            toks += image_tokens(codes[i + 1])
    toks += [*ep.answer_text(), EOS]
    return np.array(toks, np.int64), prompt_len


def map_seeds(count: int, heldout: bool) -> list[int]:
    """Seeds of `count` distinct maps; training seeds skip any map that is also a held-out map."""
    if heldout:
        return list(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + count))
    held = {"".join(make_map(s)) for s in map_seeds(256, heldout=True)}
    seeds, seen, s = [], set(held), 0
    while len(seeds) < count:
        key = "".join(make_map(s))
        if key not in seen:
            seen.add(key)
            seeds.append(s)
        s += 1
    return seeds


def episodes(count: int, heldout: bool = False) -> list[Episode]:
    return [Episode.solve(make_map(s)) for s in map_seeds(count, heldout)]


def all_states_images(eps: list[Episode], size: int) -> np.ndarray:
    """Every cell of every map with the agent on it (holes included): the image tokenizer's data."""
    n = MAP_SIZE
    return np.stack([render(ep.desc, (r, c), size) for ep in eps for r in range(n) for c in range(n)])


class EpisodeStream:
    """Episodes concatenated into one token stream; windows start at an episode start (as generation
    does: a fresh stream, then the prompt)."""

    def __init__(self, token_arrays: list[np.ndarray]):
        self.tokens = np.concatenate(token_arrays)
        self.starts = np.cumsum([0] + [len(t) for t in token_arrays[:-1]])

    def __len__(self) -> int:
        return len(self.tokens)

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        starts = rng.choice(self.starts[self.starts + length <= len(self.tokens)], size=batch)
        return np.stack([self.tokens[s : s + length] for s in starts]).astype(np.int64)
