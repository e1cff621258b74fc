"""Coverage-guided fuzzing (atheris, libFuzzer) of the byte-level readers: a bundle manifest, a session
state file, an expert file. Run in its own process by tests/test_atheris.py:

    python -m tests.atheris_targets manifest|state|expert BUNDLE WORKDIR -runs=N -seed=S

Each input is written where the reader expects a file and read; the only exception allowed out is a
NeatError. Anything else is a crash that libFuzzer reports (with the input), and the process exits
non-zero.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["neat_edge"]):
    from neat_edge.bundle import open_bundle
    from neat_edge.errors import NeatError
    from neat_edge.experts import load_expert
    from neat_edge.runtimes import open_session


def main() -> None:
    kind, bundle, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    seeds = work / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    if kind == "manifest":  # a copy of the bundle whose neat.json is the input
        clone = work / "bundle"
        shutil.copytree(bundle, clone, dirs_exist_ok=True)
        target = clone / "neat.json"
        shutil.copyfile(bundle / "neat.json", seeds / "seed")

        def read(_):
            open_bundle(clone)
    elif kind == "state":
        session = open_session(bundle)
        session.score(b"def seed(x):\n    return x\n")
        target = work / "state.safetensors"
        session.save_state(seeds / "seed")

        def read(_):
            session.load_state(target)
    else:
        target = work / "python.safetensors"
        shutil.copyfile(bundle / "experts" / "python.safetensors", seeds / "seed")

        def read(_):
            load_expert(target)

    def one_input(data: bytes) -> None:
        target.write_bytes(data)
        with contextlib.suppress(NeatError):  # the one way a bad input may end
            read(data)

    atheris.Setup([sys.argv[0], *sys.argv[4:], str(seeds)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
