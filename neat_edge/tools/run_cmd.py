"""`neat run`: continue a byte stream from a prompt on any backend."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from pathlib import Path

import typer

from neat_edge.errors import NeatError
from neat_edge.fileio import READ_CHUNK, iter_file_chunks
from neat_edge.tools.common import console


def prompt_chunks(prompt: str | None, prompt_file: Path | None):
    """The prompt as an iterator of byte chunks: a file (or stdin, '-') is streamed in bounded memory,
    never read whole, so a prompt of any size can be consumed."""
    if prompt is not None and prompt_file is not None:
        raise NeatError("give either PROMPT or --prompt-file, not both")
    if prompt_file is not None:
        if str(prompt_file) == "-":
            return iter_file_chunks(sys.stdin.buffer)
        if not prompt_file.is_file():
            raise NeatError(f"prompt file not found: {prompt_file}")
        return iter_file_chunks(prompt_file)
    # os.fsencode undoes the surrogate escapes Python uses for non-UTF-8 argv bytes.
    return iter([os.fsencode(prompt) if prompt is not None else b""])


def take_head(chunks, n: int) -> tuple[bytes, list[bytes]]:
    """(the first n bytes or fewer, every chunk read for them) from a chunk iterator."""
    read, size = [], 0
    while size < max(n, 1):
        block = next(chunks, None)
        if block is None:
            break
        read.append(block)
        size += len(block)
    return b"".join(read)[:n], read


def run_command(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    prompt: str | None = typer.Argument(None, help="Prompt text (any bytes; empty starts a fresh stream)."),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", help="Read the prompt from a file ('-' = stdin)."),
    max_bytes: int = typer.Option(128, "--max-bytes", min=0, max=1 << 24, help="Bytes to generate."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime[:cpu|cuda|coreml] or torch."),
    state: Path | None = typer.Option(None, "--state", help="Session state file: loaded if present, saved after."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed."),
    dispatch: str = typer.Option("none", "--dispatch",
                                 help="Transformer² experts: classifier, fewshot:FILE, expert:NAME[=w,...] or none."),
    dispatch_bytes: int = typer.Option(512, "--dispatch-bytes", min=0, max=1 << 20,
                                       help="Most prompt bytes pass 1 looks at."),
    verbose: bool = typer.Option(False, "--verbose", help="Print the chosen expert mixture (stderr)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write {dispatch, output, timing} as JSON here."),
    images_dir: Path | None = typer.Option(None, "--images-dir", help="MVoT: let the model draw visual thoughts "
                                           "and write them here as PNG files (thought_001.png, ...)."),
    image_scale: int = typer.Option(4, "--image-scale", min=1, max=64, help="PNG pixels per decoded pixel (nearest)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
):
    """Generate bytes after PROMPT and write them to stdout (two passes with --dispatch)."""
    import time

    from neat_edge.runtimes import open_session
    from neat_edge.runtimes.dispatch import parse_strategy

    parse_strategy(dispatch)  # a bad --dispatch fails before any work
    chunks = prompt_chunks(prompt, prompt_file)
    session = open_session(bundle, backend=backend)
    if state is not None and state.exists():
        session.load_state(state)
    start = time.perf_counter()
    head, read = take_head(chunks, dispatch_bytes)
    chosen = session.dispatch(head, dispatch, max_bytes=dispatch_bytes)  # pass 1 (memory untouched)
    if verbose:
        console.print(chosen.describe(), markup=False)
    big = prompt_file is not None and str(prompt_file) != "-" and prompt_file.stat().st_size > READ_CHUNK
    with console.status(f"reading a {prompt_file.stat().st_size / 1e6:.1f} MB prompt...") if big \
            else contextlib.nullcontext():
        for block in itertools.chain(read, chunks):  # the prompt streams through; scores are not kept
            session.score(block)
    data = b""  # consumed: generation continues the stream
    images = []
    if images_dir is None:
        out = session.generate(data, max_bytes, temperature=temperature, seed=seed)  # pass 2 with the adapted z
    else:  # text chunks and visual thoughts; the text goes to stdout with a marker where each image was drawn
        items = session.generate(data, max_bytes, temperature=temperature, seed=seed, allow_images=True)
        images = write_images(images_dir, [x for x in items if not isinstance(x, bytes)], image_scale)
        out = b"".join(x if isinstance(x, bytes) else f"[image {images[i]}]\n".encode()
                       for i, x in enumerate_images(items))
    total = time.perf_counter() - start
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()
    if state is not None:
        session.save_state(state)
    if json_out is not None:
        from neat_edge.fileio import atomic_write_json

        atomic_write_json(json_out, {"dispatch": chosen.to_json(), "output": out.decode("utf-8", errors="replace"),
                                     "output_bytes": len(out), "backend": backend, "images": [str(p) for p in images],
                                     "timing": {"dispatch_s": chosen.seconds, "total_s": total}})


def enumerate_images(items):
    """(index of the image among the images, item) for every item; text items get None."""
    count = 0
    for x in items:
        if isinstance(x, bytes):
            yield None, x
        else:
            yield count, x
            count += 1


def write_images(folder: Path, images, scale: int) -> list[Path]:
    """Visual thoughts as PNG files, enlarged `scale` times (nearest neighbour, so cells stay sharp)."""
    from PIL import Image

    from neat_edge.fileio import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(images, 1):
        img = Image.fromarray(pixels, "RGB")
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        path = folder / f"thought_{i:03d}.png"
        atomic_write(path, lambda tmp, img=img: img.save(tmp, format="PNG"))
        paths.append(path)
    return paths
