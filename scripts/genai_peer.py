"""The ONNX Runtime GenAI peer of docs/decode_speed.md: a random-weight Llama built offline by GenAI's model
builder, and its greedy generation timed. Runs inside the peer's own venv (scripts/build_genai_peer.sh makes
it: GenAI's builder needs transformers>=5, which the project's `hf` extra cannot share).

    python scripts/genai_peer.py build OUT [--vocab 260 --hidden 160 --layers 6 --heads 5 --head-dim 32 --ffn 640]
    python scripts/genai_peer.py time OUT [--prompt 64 --new 256 --threads 1 --rounds 1]   # one JSON line

`build` writes OUT/hf (config, random weights, a byte-level tokenizer of `vocab` tokens) and OUT/model
(`python -m onnxruntime_genai.models.builder -i OUT/hf -o OUT/model -p fp32 -e cpu`), with the session's
thread count set in genai_config.json at `time`. `time` prints {"tokens_per_s": ..., "parameters": ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def build(out: Path, vocab: int, hidden: int, layers: int, heads: int, head_dim: int, ffn: int, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hf = out / "hf"
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, head_dim=head_dim, intermediate_size=ffn, max_position_embeddings=1024,
                      bos_token_id=vocab - 4, eos_token_id=vocab - 3, pad_token_id=vocab - 2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(hf)
    # a byte-level vocabulary (token b = byte b, four specials): the builder reads a tokenizer; timing feeds ids
    words = {f"<0x{b:02X}>": b for b in range(vocab - 4)}
    words.update({"<s>": vocab - 4, "</s>": vocab - 3, "<pad>": vocab - 2, "<unk>": vocab - 1})
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(words, unk_token="<unk>")), bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.save_pretrained(hf)
    params = sum(p.numel() for p in model.parameters())
    (out / "peer.json").write_text(json.dumps({"parameters": params, "vocab": vocab, "hidden": hidden, "layers": layers,
                                               "heads": heads, "head_dim": head_dim, "ffn": ffn}))
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out / "model"),
                    "-p", "fp32", "-e", "cpu", "-c", str(out / "cache")], check=True)
    print(f"built {out / 'model'} ({params:,} parameters)")


def set_threads(model_dir: Path, threads: int) -> None:
    path = model_dir / "genai_config.json"
    cfg = json.loads(path.read_text())
    options = cfg["model"]["decoder"].setdefault("session_options", {})
    options.update({"intra_op_num_threads": threads, "inter_op_num_threads": 1})
    path.write_text(json.dumps(cfg, indent=2))


def time_generation(out: Path, prompt: int, new: int, threads: int, rounds: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    model_dir = out / "model"
    set_threads(model_dir, threads)
    model = og.Model(str(model_dir))
    ids = np.frombuffer((b"The quick brown fox jumps over the lazy dog. " * 4)[:prompt], np.uint8).astype(np.int32)

    def once() -> float:
        params = og.GeneratorParams(model)
        # greedy, and never an early stop on the random model's end token: exactly `new` tokens
        params.set_search_options(do_sample=False, max_length=prompt + new, min_length=prompt + new)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        dt = time.perf_counter() - t0
        assert len(gen.get_sequence(0)) == prompt + new
        return dt

    once()  # warm
    times = [once() for _ in range(rounds)]
    meta = json.loads((out / "peer.json").read_text())
    return {"peer": "onnxruntime-genai", "version": og.__version__, "tokens_per_s": new / float(np.median(times)),
            "seconds": times, "prompt_tokens": prompt, "new_tokens": new, "threads": threads, **meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    for name, default in (("vocab", 260), ("hidden", 160), ("layers", 6), ("heads", 5), ("head-dim", 32), ("ffn", 640),
                          ("seed", 0)):
        b.add_argument(f"--{name}", type=int, default=default)
    t = sub.add_parser("time")
    t.add_argument("out", type=Path)
    for name, default in (("prompt", 64), ("new", 256), ("threads", 1), ("rounds", 1)):
        t.add_argument(f"--{name}", type=int, default=default)
    a = parser.parse_args()
    if a.command == "build":
        build(a.out, a.vocab, a.hidden, a.layers, a.heads, a.head_dim, a.ffn, a.seed)
    else:
        print(json.dumps(time_generation(a.out, a.prompt, a.new, a.threads, a.rounds)))


if __name__ == "__main__":
    main()
