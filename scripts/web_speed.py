"""Generation bytes/s of a `neat-export --target web` folder in headless chromium (WebAssembly, one thread
and all threads) beside the Python session on ONNX Runtime (one thread and all), in one run on one machine.

    PYTHONPATH=. python scripts/web_speed.py exports/web [--bytes 512] [--warmup 256] [--repeats 3] [--json OUT]

Each runtime generates greedily from the same prompt: an untimed warm-up generation first (WebAssembly code
is compiled in tiers while it runs), then `repeats` timed ones from a fresh stream; the best is reported.
The bytes must be the same everywhere (checked)."""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
import time
from pathlib import Path

from neat_edge.runtimes import open_session
from neat_edge.tools.web_server import serving

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
JS_RUN = """async ([prompt, warmup, n, repeats]) => {
  await window.neatDemo.ready;
  const s = window.neatDemo.session, p = Uint8Array.from(prompt);
  s.reset(); await s.generate(p, warmup);
  let best = Infinity, out;
  for (let r = 0; r < repeats; r++) {
    s.reset(); await s.append(p); await s.nextByteLogprobs();  // prefill untimed: generation alone is timed
    const t0 = performance.now();
    out = await s.generate(new Uint8Array(0), n);
    best = Math.min(best, performance.now() - t0);
  }
  return [Array.from(out), best / 1000, navigator.hardwareConcurrency, crossOriginIsolated]; }"""


def python_rate(folder: Path, prompt: bytes, warmup: int, n: int, repeats: int, threads: int | None):
    s = open_session(folder, "onnxruntime", threads=threads)
    s.generate(prompt, warmup)
    best, out = float("inf"), b""
    for _ in range(repeats):
        s.reset()
        s.append(prompt)
        s.next_byte_logprobs()
        t0 = time.perf_counter()
        out = s.generate(b"", n)
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("web", type=Path, help="a neat-export --target web folder")
    ap.add_argument("--bytes", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    prompt = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_bytes()[:200]
    cores = os.cpu_count() or 1
    rows, reference = [], None
    for threads in (1, cores):
        out, seconds = python_rate(args.web, prompt, args.warmup, args.bytes, args.repeats, threads)
        reference = reference or out
        rows.append({"runtime": "Python, ONNX Runtime (CPU)", "threads": threads, "bytes_per_s": args.bytes / seconds,
                     "same_bytes": out == reference})
    with serving(args.web) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for threads in (1, cores):
            page = browser.new_page()
            page.set_default_timeout(600_000)
            page.goto(f"{url}index.html?backend=wasm&threads={threads}")
            out, seconds, _, isolated = page.evaluate(JS_RUN, [list(prompt), args.warmup, args.bytes, args.repeats])
            rows.append({"runtime": "chromium, ONNX Runtime Web (WebAssembly)", "threads": threads,
                         "bytes_per_s": args.bytes / seconds, "same_bytes": bytes(out) == reference,
                         "cross_origin_isolated": isolated})
            page.close()
        version = browser.version
        browser.close()
    one_thread = rows[0]["bytes_per_s"]
    print(f"{args.bytes} greedy bytes after a {len(prompt)}-byte prompt, best of {args.repeats}; "
          f"chromium {version}; {cores} cores")
    print(f"{'runtime':44} {'threads':>7} {'bytes/s':>9} {'vs Python 1 thread':>19} same bytes")
    for r in rows:
        r["vs_python_one_thread"] = r["bytes_per_s"] / one_thread
        print(f"{r['runtime']:44} {r['threads']:>7} {r['bytes_per_s']:9.1f} {r['vs_python_one_thread']:18.0%} "
              f"{r['same_bytes']}")
    if args.json:
        args.json.write_text(json.dumps({"bytes": args.bytes, "chromium": version, "cores": cores, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
