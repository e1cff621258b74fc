"""Greedy generation speed of a bundle against its two peers, measured in one run (docs/decode_speed.md):

  ours      Session.generate through the bundle's decode graphs on ONNX Runtime (CPU rewrites where the
            bundle has them; --plain: the plain graphs)
  optimum   a same-size byte GPT-2 (random weights) exported by Optimum and run by ORTModelForCausalLM.generate
            with its KV cache
  genai     a same-size random Llama built by ONNX Runtime GenAI's model builder (scripts/build_genai_peer.sh),
            timed in its own venv

Every peer: one thread, a 64-byte prompt, 256 new tokens (bytes), greedy, one untimed warm run. The rounds
interleave the peers (a burst of load on the shared machine hits all of them) and the table gives each
round's ratios as well as the medians.

    python scripts/decode_speed_table.py exports/tiny [--rounds 3] [--json OUT] [--gpt2-layers 6 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"
PROMPT = (b"The quick brown fox jumps over the lazy dog. " * 4)[:64]


def time_ours(bundle: Path, new: int, threads: int, plain: bool):
    from neat_edge.bundle import open_bundle
    from neat_edge.runtimes import open_session
    from neat_edge.runtimes.select import decode_graphs

    session = open_session(bundle, "onnxruntime", threads=threads)
    if plain:
        session.decode_graphs = decode_graphs(open_bundle(bundle), "onnxruntime", "cpu", threads=threads, plain=True)

    def once() -> float:
        session.reset()
        t0 = time.perf_counter()
        out = session.generate(PROMPT, new)
        assert len(out) == new
        return new / (time.perf_counter() - t0)

    once()
    return once


def build_gpt2(out: Path, vocab: int, hidden: int, layers: int, heads: int, positions: int) -> Path:
    """A random-weight byte GPT-2 exported by Optimum (kept under .peers/, rebuilt when its sizes change)."""
    sizes = {"vocab": vocab, "hidden": hidden, "layers": layers, "heads": heads, "positions": positions}
    onnx_dir = out / "onnx"
    if (out / "sizes.json").is_file() and json.loads((out / "sizes.json").read_text()) == sizes and onnx_dir.is_dir():
        return onnx_dir
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
                     bos_token_id=vocab - 4, eos_token_id=vocab - 3)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(out / "hf")
    (out / "parameters.json").write_text(json.dumps(sum(p.numel() for p in model.parameters())))
    ORTModelForCausalLM.from_pretrained(out / "hf", export=True, use_cache=True).save_pretrained(onnx_dir)
    (out / "sizes.json").write_text(json.dumps(sizes))
    return onnx_dir


def time_gpt2(onnx_dir: Path, new: int, threads: int):
    import numpy as np
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    model = ORTModelForCausalLM.from_pretrained(onnx_dir, session_options=opts, provider="CPUExecutionProvider",
                                                use_cache=True)
    ids = torch.from_numpy(np.frombuffer(PROMPT, np.uint8).astype(np.int64))[None]

    def once() -> float:
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=model.config.eos_token_id)
        assert out.shape[1] == ids.shape[1] + new
        return new / (time.perf_counter() - t0)

    once()
    return once, json.loads((onnx_dir.parent / "parameters.json").read_text())


def time_genai(new: int, threads: int):
    python = PEERS / "genai-venv" / "bin" / "python"
    model = PEERS / "genai-llama"
    if not python.is_file() or not (model / "model").is_dir():
        return None

    def once() -> float:
        run = subprocess.run([str(python), str(ROOT / "scripts" / "genai_peer.py"), "time", str(model), "--prompt",
                              str(len(PROMPT)), "--new", str(new), "--threads", str(threads)],
                             capture_output=True, text=True, check=True)
        once.meta = json.loads(run.stdout.strip().splitlines()[-1])
        return once.meta["tokens_per_s"]

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="ours on the plain decode graphs (no CPU rewrites)")
    parser.add_argument("--json", type=Path)
    for name, default in (("vocab", 260), ("hidden", 160), ("layers", 6), ("heads", 5), ("positions", 512)):
        parser.add_argument(f"--gpt2-{name}", type=int, default=default, help=f"Optimum GPT-2 peer: {name}")
    a = parser.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from neat_edge.bundle import open_bundle

    ours = time_ours(a.bundle, a.new, a.threads, a.plain)
    gpt2_dir = build_gpt2(PEERS / "optimum-gpt2", a.gpt2_vocab, a.gpt2_hidden, a.gpt2_layers, a.gpt2_heads, a.gpt2_positions)
    gpt2, gpt2_params = time_gpt2(gpt2_dir, a.new, a.threads)
    genai = time_genai(a.new, a.threads)
    if genai is None:
        print("no GenAI peer: run scripts/build_genai_peer.sh first (its row is left out)", file=sys.stderr)
    rounds = []
    for _ in range(a.rounds):  # interleaved: one of each per round
        row = {"ours": ours(), "optimum_gpt2": gpt2()}
        if genai is not None:
            row["genai_llama"] = genai()
        row["ours_vs_optimum"] = row["ours"] / row["optimum_gpt2"]
        if genai is not None:
            row["ours_vs_genai"] = row["ours"] / row["genai_llama"]
        rounds.append(row)
    manifest = open_bundle(a.bundle).manifest
    report = {"bundle": str(a.bundle), "model": manifest["config"]["name"], "parameters": manifest["parameters"],
              "optimum_gpt2_parameters": gpt2_params, "genai": getattr(genai, "meta", None), "threads": a.threads,
              "prompt_bytes": len(PROMPT), "new_tokens": a.new, "plain": a.plain, "rounds": rounds,
              "median": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}}
    print(f"greedy generation, {a.threads} thread(s), {len(PROMPT)}-token prompt, {a.new} new tokens "
          f"(tokens/s; ours: bytes/s)")
    keys = list(rounds[0])
    print("| round | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for i, r in enumerate(rounds, 1):
        print(f"| {i} | " + " | ".join(f"{r[k]:.2f}" if "_vs_" in k else f"{r[k]:.0f}" for k in keys) + " |")
    print("| median | " + " | ".join(f"{report['median'][k]:.2f}" if "_vs_" in k else f"{report['median'][k]:.0f}"
                                     for k in keys) + " |")
    print(json.dumps(report))
    if a.json:
        from neat_edge.fileio import atomic_write_json

        atomic_write_json(a.json, report)


if __name__ == "__main__":
    main()
