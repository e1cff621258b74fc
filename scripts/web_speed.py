"""Generation bytes/s of a `neat-export --target web` folder in headless chromium (WebAssembly, one thread
and all threads) beside the Python session on ONNX Runtime (one thread and all), in one run on one machine.

    PYTHONPATH=. python scripts/web_speed.py exports/web [--bytes 512] [--warmup 256] [--repeats 3] [--json OUT]

Each runtime generates greedily from the same prompt: an untimed warm-up generation first (WebAssembly code
is compiled in tiers while it runs), then `repeats` timed rounds from a fresh stream (prefill untimed), the four
runtimes interleaved within each round; the median and the best of each are reported, and the ratios of the
medians (on a shared machine a round's load falls on the four alike). The bytes must be the same everywhere.
Python opens the folder as a bundle: its ONNX Runtime session runs the same decode graphs as the page (the CPU
rewrite, caches written in place)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sysconfig
import time
from pathlib import Path

from neat_edge.runtimes import open_session
from neat_edge.tools.web_server import serving

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
JS_WARM = """async ([prompt, warmup]) => {
  await window.neatDemo.ready;
  const s = window.neatDemo.session;
  s.reset(); await s.generate(Uint8Array.from(prompt), warmup);
  return [navigator.hardwareConcurrency, crossOriginIsolated]; }"""
JS_TIMED = """async ([prompt, n]) => {
  const s = window.neatDemo.session;
  s.reset(); await s.append(Uint8Array.from(prompt)); await s.nextByteLogprobs();  // prefill untimed
  const t0 = performance.now();
  const out = await s.generate(new Uint8Array(0), n);
  return [Array.from(out), (performance.now() - t0) / 1000]; }"""


class PythonRunner:
    def __init__(self, folder: Path, prompt: bytes, warmup: int, threads: int):
        self.session, self.prompt = open_session(folder, "onnxruntime", threads=threads), prompt
        self.session.generate(prompt, warmup)

    def timed(self, n: int) -> tuple[bytes, float]:
        s = self.session
        s.reset()
        s.append(self.prompt)
        s.next_byte_logprobs()
        t0 = time.perf_counter()
        out = s.generate(b"", n)
        return out, time.perf_counter() - t0


class BrowserRunner:
    def __init__(self, browser, url: str, prompt: bytes, warmup: int, threads: int):
        self.page, self.prompt = browser.new_page(), list(prompt)
        self.page.set_default_timeout(600_000)
        self.page.goto(f"{url}index.html?backend=wasm&threads={threads}")
        self.isolated = self.page.evaluate(JS_WARM, [self.prompt, warmup])[1]

    def timed(self, n: int) -> tuple[bytes, float]:
        out, seconds = self.page.evaluate(JS_TIMED, [self.prompt, n])
        return bytes(out), seconds


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
    python_name, browser_name = "Python, ONNX Runtime (CPU)", "chromium, ONNX Runtime Web (WebAssembly)"
    with serving(args.web) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        runners = {}
        for threads in (1, cores):
            runners[python_name, threads] = PythonRunner(args.web, prompt, args.warmup, threads)
            runners[browser_name, threads] = BrowserRunner(browser, url, prompt, args.warmup, threads)
        seconds = {key: [] for key in runners}
        outputs = {}
        for _ in range(args.repeats):  # interleaved: a change in the machine's load falls on every runtime alike
            for key, runner in runners.items():
                outputs[key], took = runner.timed(args.bytes)
                seconds[key].append(took)
        version = browser.version
        browser.close()
    reference = outputs[python_name, 1]
    rows = [{"runtime": name, "threads": threads, "bytes_per_s": args.bytes / statistics.median(seconds[name, threads]),
             "best_bytes_per_s": args.bytes / min(seconds[name, threads]),
             "rounds_bytes_per_s": [args.bytes / t for t in seconds[name, threads]],
             "same_bytes": outputs[name, threads] == reference} for name, threads in runners]
    one_thread = rows[0]["bytes_per_s"]
    print(f"{args.bytes} greedy bytes after a {len(prompt)}-byte prompt, {args.repeats} interleaved rounds; "
          f"chromium {version}; {cores} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"{'runtime':44} {'threads':>7} {'median B/s':>10} {'best B/s':>9} {'vs Python 1 thread':>19} same bytes")
    for r in rows:
        r["vs_python_one_thread"] = r["bytes_per_s"] / one_thread
        print(f"{r['runtime']:44} {r['threads']:>7} {r['bytes_per_s']:10.1f} {r['best_bytes_per_s']:9.1f} "
              f"{r['vs_python_one_thread']:18.0%} {r['same_bytes']}")
    if args.json:
        args.json.write_text(json.dumps({"bytes": args.bytes, "chromium": version, "cores": cores, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
