"""A held-out set of hostile and fault cases against a bundle, run as an attacker would: hostile state,
expert, manifest and data files (sparse multi-GB, deep, duplicated, forged), bad numbers on every CLI
and at the Python API, graphs that return wrong shapes or fail inside ONNX Runtime, full filesystems
(a small tmpfs in a private mount namespace where `unshare -rm` works, else a monkeypatched write),
install races and Ctrl-C at every stage.

    python scripts/hostile_cases.py exports/tiny [--only PREFIX] [--json results.json]

Every case must end in exit 0 or one `error: ...` line (a NeatError from the API): no `internal error`,
no traceback, no death by a signal, no hang (120 s), nothing left behind (.partial, .tmp, .old), peak
RSS under 512 MB above an idle `neat run`. Prints one line per failing case and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
NEAT, EXPORT, BENCH = str(BIN / "neat"), str(BIN / "neat-export"), str(BIN / "neat-bench")
GB = 1 << 30
sys.path.insert(0, str(Path(__file__).parent))
from hostile_runner import API_CHILD, RSS_LIMIT_MB, judge_cli, run_cli  # noqa: E402


# --- hostile files --------------------------------------------------------------------------------------
def safetensors_bytes(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + payload


def raw_header(raw: bytes, payload: bytes = b"") -> bytes:
    return len(raw).to_bytes(8, "little") + raw + payload


def sparse(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(max(size, len(head)))
    return path


def claim(name: str, payload: int, meta: dict | None = None) -> bytes:
    header = {name: {"dtype": "F32", "shape": [payload // 4], "data_offsets": [0, payload]}}
    if meta:
        header["__metadata__"] = meta
    return safetensors_bytes(header)


def clone(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, symlinks=True)
    return dst


def refresh_checksums(b: Path) -> None:
    """Recompute the manifest's sha256 list after a deliberate edit (a forger would)."""
    import hashlib

    m = json.loads((b / "neat.json").read_text())
    for rel in m["files"]:
        m["files"][rel] = hashlib.sha256((b / rel).read_bytes()).hexdigest()
    (b / "neat.json").write_text(json.dumps(m))


def edit_manifest(b: Path, fn) -> Path:
    m = json.loads((b / "neat.json").read_text())
    fn(m)
    (b / "neat.json").write_text(json.dumps(m))
    return b


def onnx_graph(path: Path, kind: str, like: Path) -> None:
    """Replace graph `like` with one of the same inputs and outputs (names, dtypes; outputs declared with
    symbolic sizes) that returns wrong shapes (kind 'shape'), fails when run ('fail') or asks for a 4 TB
    buffer ('alloc'). The sizes pass through a value of an input (x 0), so no shape inference can see
    them before the run: only the run-time checks can."""
    import onnx
    from onnx import TensorProto, helper

    src = onnx.load(str(like), load_external_data=False)
    inputs = [helper.make_tensor_value_info(i.name, i.type.tensor_type.elem_type,
                                            [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
              for i in src.graph.input]
    probe = next(i.name for i in src.graph.input if i.type.tensor_type.elem_type == TensorProto.INT64)
    nodes = [helper.make_node("ReduceMin", [probe], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero_i"], ["runtime_zero"])]
    inits = [helper.make_tensor("zero_i", TensorProto.INT64, [], [0])]
    outputs = []
    for k, o in enumerate(src.graph.output):
        t = o.type.tensor_type.elem_type
        rank = len(o.type.tensor_type.shape.dim)
        outputs.append(helper.make_tensor_value_info(o.name, t, [f"d{k}_{j}" for j in range(rank)]))
        dims = [1] * rank if kind == "shape" else ([1 << 40] + [1] * (rank - 1) if kind == "alloc" else [7] * rank)
        inits += [helper.make_tensor(f"c{k}", TensorProto.INT64, [rank], dims),
                  helper.make_tensor(f"z{k}", t, [], [False] if t == TensorProto.BOOL else [0])]
        nodes.append(helper.make_node("Add", [f"c{k}", "runtime_zero"], [f"s{k}"]))
        if kind == "fail":  # reshape a probe of 4 values into 7 x 7 x ...: fails inside ORT when run
            inits.append(helper.make_tensor(f"four{k}", t, [4], [False] * 4 if t == TensorProto.BOOL else [0] * 4))
            nodes.append(helper.make_node("Reshape", [f"four{k}", f"s{k}"], [o.name]))
        else:
            nodes.append(helper.make_node("Expand", [f"z{k}", f"s{k}"], [o.name]))
    g = helper.make_graph(nodes, "hostile", inputs, outputs, inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", type=Path)
    opts = ap.parse_args()
    bundle = opts.bundle.resolve()
    work = Path(tempfile.mkdtemp(prefix="hostile."))
    results: list[tuple[str, str | None, float]] = []

    idle = run_cli([NEAT, "run", str(bundle), "hi", "--max-bytes", "2"], work)["peak_mb"]
    print(f"idle `neat run`: peak RSS {idle:.0f} MB", flush=True)

    def cli(name, args, expect=None, **kw):
        if not name.startswith(opts.only):
            return
        folder = work / f"c{len(results):03d}"
        folder.mkdir(exist_ok=True)
        setup = kw.pop("setup", None)
        if setup:
            args = setup(folder, args)
        r = run_cli([a.replace("{F}", str(folder)) if isinstance(a, str) else a for a in args], folder, **kw)
        why = judge_cli(r, idle, folder, expect)
        results.append((name, why, r["seconds"]))
        last = (r["err"].strip().splitlines() or ["(exit 0)"])[-1][:110]
        print(f"{'FAIL' if why else 'ok  '} {name} [{r['seconds']:.1f}s, {r['peak_mb'] - idle:+.0f} MB] "
              f"{why or last}", flush=True)

    run, B = [NEAT, "run"], str(bundle)

    # --- A. state files ---------------------------------------------------------------------------------
    def state(content_fn):
        def setup(folder, args):
            content_fn(folder / "s.safetensors")
            return args
        return setup

    st = "{F}/s.safetensors"
    state_cases = {
        "4 GB claimed": lambda p: sparse(p, claim("state.memory", 4 * GB), 8 + 200 + 4 * GB),
        "4 GB of zeros": lambda p: sparse(p, b"", 4 * GB),
        "header length 2^64-1": lambda p: p.write_bytes(b"\xff" * 8 + b"{}"),
        "header length 0": lambda p: p.write_bytes(b"\0" * 8),
        "header nested 100k deep": lambda p: p.write_bytes(raw_header(b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}")),
        "header of 1M tensors": lambda p: p.write_bytes(safetensors_bytes(
            {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(1_000_000)})),
        "header of 60k tensors": lambda p: p.write_bytes(safetensors_bytes(
            {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(60_000)})),
        "duplicate tensor names": lambda p: p.write_bytes(raw_header(
            b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
            b'"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}', b"\0" * 8)),
        "BF16 dtype": lambda p: p.write_bytes(safetensors_bytes({"a": {"dtype": "BF16", "shape": [2],
                                                                       "data_offsets": [0, 4]}}, b"\0" * 4)),
        "negative shape": lambda p: p.write_bytes(safetensors_bytes({"a": {"dtype": "U8", "shape": [-4],
                                                                           "data_offsets": [0, 4]}}, b"\0" * 4)),
        "2^62 x 2^62 shape": lambda p: p.write_bytes(safetensors_bytes(
            {"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}, b"\0" * 16)),
        "overlapping offsets": lambda p: p.write_bytes(safetensors_bytes(
            {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
             "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, b"\0" * 12)),
        "offsets past the end": lambda p: p.write_bytes(safetensors_bytes(
            {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 2**63]}}, b"\0" * 8)),
        "metadata is nested": lambda p: p.write_bytes(safetensors_bytes({"__metadata__": {"format": {"a": "b"}}})),
        "NaN in header": lambda p: p.write_bytes(
            raw_header(b'{"a": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 0]}}')),
        "non-UTF-8 header": lambda p: p.write_bytes((8).to_bytes(8, "little") + b'{"\xff":1}'),
        "a pickle": lambda p: p.write_bytes(b"\x80\x04\x95" + b"\0" * 64),
    }
    for label, fn in state_cases.items():
        cli(f"state: {label}", [*run, B, "x", "--max-bytes", "1", "--state", st], "error", setup=state(fn))
    cli("state: a FIFO", [*run, B, "x", "--max-bytes", "1", "--state", st], "error",
        setup=lambda f, a: (os.mkfifo(f / "s.safetensors"), a)[1])
    cli("state: /dev/zero", [*run, B, "x", "--max-bytes", "1", "--state", "/dev/zero"], "error")
    cli("state: a folder", [*run, B, "x", "--max-bytes", "1", "--state", "{F}"], "error")
    cli("state: a symlink loop", [*run, B, "x", "--max-bytes", "1", "--state", "{F}/loop"], None,
        setup=lambda f, a: (os.symlink(f / "loop", f / "loop"), a)[1])

    # --- B. stray files in experts/ (every session opens the folder) -----------------------------------------
    def with_expert(fn):
        def setup(folder, args):
            b = clone(bundle, folder / "b")
            (b / "experts").mkdir(exist_ok=True)
            fn(b / "experts")
            return [a.replace("{B}", str(b)) for a in args]
        return setup

    expert_cases = {
        "4 GB expert": lambda e: sparse(e / "huge.safetensors", claim("x", 4 * GB, {"format": "neat-expert/1"}),
                                        4 * GB + 300),
        "expert nested 50k deep": lambda e: (e / "deep.safetensors").write_bytes(
            raw_header(b"{" + b'"a":[' * 50_000 + b"]" * 50_000 + b"}")),
        "expert header of 1M tensors": lambda e: (e / "many.safetensors").write_bytes(safetensors_bytes(
            {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(1_000_000)})),
        "5000 files in experts/": lambda e: [(e / f"x{i}.safetensors").write_bytes(b"junk") for i in range(5000)],
        "a FIFO in experts/": lambda e: os.mkfifo(e / "fifo.safetensors"),
        "a link to /dev/zero": lambda e: os.symlink("/dev/zero", e / "zero.safetensors"),
        "a folder named .safetensors": lambda e: (e / "dir.safetensors").mkdir(),
        "an expert of NaN": lambda e: __import__("neat_edge.experts", fromlist=["x"]).save_expert(
            e / "nan.safetensors", "d", {"latent.layers.0.attn.q": np.full(4, np.nan, np.float32)}),
    }
    import numpy as np

    for label, fn in expert_cases.items():
        cli(f"experts: {label}", [*run, "{B}", "hello", "--max-bytes", "2"], "ok", setup=with_expert(fn))
    cli("experts: 4 GB expert, chosen", [*run, "{B}", "hello", "--max-bytes", "2", "--dispatch", "expert:huge"],
        "error", setup=with_expert(expert_cases["4 GB expert"]))

    # --- C. manifests ---------------------------------------------------------------------------------------
    def manifest(fn, text=False):
        def setup(folder, args):
            b = clone(bundle, folder / "b")
            if text:
                (b / "neat.json").write_bytes(fn((b / "neat.json").read_bytes()))
            else:
                fn(b)
            return [a.replace("{B}", str(b)) for a in args]
        return setup

    def nested(m):
        m["parity"] = {"deep": json.loads("[" * 60 + "]" * 60)}
        m["extra"] = None

    manifest_cases = {
        "duplicate top-level key": (lambda t: t.replace(b'"format"', b'"format": "x", "format"', 1), True),
        "duplicate key in a graph entry": (lambda t: t.replace(b'"file":', b'"file": "a", "file":', 1), True),
        "50k-deep nesting": (lambda t: t[:-2] + b', "z": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n", True),
        "NaN": (lambda t: t.replace(b'"svf_rank": ', b'"svf_rank": NaN, "x": ', 1), True),
        "Infinity": (lambda t: t.replace(b'"svf_rank": ', b'"x": Infinity, "svf_rank": ', 1), True),
        "1e999": (lambda t: t.replace(b'"svf_rank": ', b'"x": 1e999, "svf_rank": ', 1), True),
        "a 5000-digit integer": (lambda t: t.replace(b'"svf_rank": ', b'"x": ' + b"9" * 5000 + b', "svf_rank": ', 1),
                                 True),
        "4 GB (sparse)": (lambda t: t[:100], True),
        "17 MB of padding": (lambda t: t[:-2] + b" " * (17 << 20) + b"}\n", True),
        "non-UTF-8": (lambda t: t.replace(b'"format"', b'"\xff\xfe": 1, "format"', 1), True),
        "a JSON array": (lambda t: b"[" + t + b"]", True),
        "a UTF-8 BOM": (lambda t: b"\xef\xbb\xbf" + t, True),
    }
    for label, (fn, text) in manifest_cases.items():
        setup = manifest(fn, text)
        if label == "4 GB (sparse)":
            def setup(folder, args, fn=fn):
                b = clone(bundle, folder / "b")
                head = (b / "neat.json").read_bytes()[:100]
                (b / "neat.json").unlink()
                sparse(b / "neat.json", head, 4 * GB)
                return [a.replace("{B}", str(b)) for a in args]
        cli(f"manifest: {label}", [*run, "{B}", "x", "--max-bytes", "1"], "error", setup=setup)

    def decode_edit(fn):
        return manifest(lambda b: edit_manifest(b, lambda m: fn(m["decode"])))

    def first_cache_input(d):
        return next(t for g in d["graphs"]["onnx"].values() for t in g["inputs"] if t["name"].startswith("cache."))

    cli("manifest: cache shape vs graph", [*run, "{B}", "x", "--max-bytes", "1"], "decode",
        setup=decode_edit(lambda d: d["caches"][0].__setitem__("shape", [*d["caches"][0]["shape"][:-1], 3])))
    cli("manifest: cache dtype vs graph", [*run, "{B}", "x", "--max-bytes", "1"], "decode",
        setup=decode_edit(lambda d: d["caches"][1].__setitem__("dtype", "float16")))
    cli("manifest: a cache not listed", [*run, "{B}", "x", "--max-bytes", "1"], "decode",
        setup=decode_edit(lambda d: d.__setitem__("caches", d["caches"][1:])))
    cli("manifest: graph cache input resized", [*run, "{B}", "x", "--max-bytes", "1"], "error",
        setup=decode_edit(lambda d: first_cache_input(d).__setitem__("shape", ["batch", 5])))
    cli("manifest: 100k listed files", [*run, "{B}", "x", "--max-bytes", "1"], "error",
        setup=manifest(lambda b: edit_manifest(b, lambda m: m["files"].update({f"f{i}": "0" * 64 for i in range(100_000)}))))
    cli("manifest: 10k graphs", [*run, "{B}", "x", "--max-bytes", "1"], "error",
        setup=manifest(lambda b: edit_manifest(b, lambda m: m["graphs"].update({f"g{i}": {} for i in range(10_000)}))))
    cli("manifest: svf_layout of 100k layers", [*run, "{B}", "x", "--max-bytes", "1"], "error",
        setup=manifest(lambda b: edit_manifest(b, lambda m: m.__setitem__(
            "svf_layout", [{"name": f"l{i}", "offset": i, "rank": 1} for i in range(100_000)]))))
    cli("manifest: 4 GB initial state (forged checksum kept)", [*run, "{B}", "x", "--max-bytes", "1"], "error",
        setup=manifest(lambda b: ((b / "initial_state.safetensors").unlink(),
                                  sparse(b / "initial_state.safetensors", claim("state.x", 4 * GB), 4 * GB + 200))))

    def forged_config(b):
        cfg = b / "checkpoint" / "config.json"
        text = cfg.read_text()
        cfg.unlink()
        cfg.write_text(text.replace('"name"', '"name": "x", "name"', 1))
        refresh_checksums(b)

    cli("manifest: checkpoint config with a duplicate key (checksums forged)", [*run, "{B}", "x", "--max-bytes", "1"],
        "error", setup=manifest(forged_config))

    # --- H. graphs that lie ----------------------------------------------------------------------------------
    def graph(kind, which="step.onnx"):
        def fn(b):
            target = b / which
            target.unlink()
            onnx_graph(target, kind, bundle / which)
            refresh_checksums(b)
        return manifest(fn)

    cli("graph: step returns wrong shapes", [*run, "{B}", "x", "--max-bytes", "1"], "error", setup=graph("shape"))
    cli("graph: step fails at run time", [*run, "{B}", "x", "--max-bytes", "1"], "error", setup=graph("fail"))
    cli("graph: step asks for 4 TB", [*run, "{B}", "x", "--max-bytes", "1"], "error", setup=graph("alloc"))
    cli("graph: decode_byte returns wrong shapes", [*run, "{B}", "x", "--max-bytes", "8"], "error",
        setup=graph("shape", "decode_byte.onnx"))
    cli("graph: decode_start fails at run time", [*run, "{B}", "x", "--max-bytes", "8"], "error",
        setup=graph("fail", "decode_start.onnx"))
    cli("graph: image decoder asks for 4 TB", [*run, "{B}", "x", "--max-bytes", "8", "--images-dir", "{F}/img"], None,
        setup=graph("alloc", "image_decoder.onnx"))

    # --- D. text inputs ----------------------------------------------------------------------------------------
    text3 = work / "big.txt"
    sparse(text3, b"def f(x):\n    return x\n" * 100, 3 * GB)
    sparse(work / "big.json", b'["a", "b"]', 3 * GB)
    (work / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (work / "many.json").write_text(json.dumps(["ab"] * 100_000))
    (work / "dup.json").write_text('{"a": 1, "a": 2}')
    (work / "surrogate.json").write_text('["\\ud800 lone"]')
    os.mkfifo(work / "fifo.json")
    with open(text3, "rb") as stdin:
        cli("text: 3 GB prompt on stdin, --dispatch-bytes 1 MiB", [*run, B, "--prompt-file", "-", "--dispatch-bytes",
                                                                    str(1 << 20), "--max-bytes", "1"], None,
            stdin=stdin, watch=25)
    cli("text: --dispatch-bytes over 1 MiB", [*run, B, "x", "--dispatch-bytes", str((1 << 20) + 1)], "error")
    for name, expect in (("big.json", "error"), ("big.txt", None), ("deep.json", "error"), ("many.json", "error"),
                         ("dup.json", "error"), ("surrogate.json", None), ("fifo.json", "error")):
        cli(f"text: few-shot {name}", [*run, B, "x", "--max-bytes", "1", "--dispatch", f"fewshot:{work / name}"],
            expect)
    cli("text: parity corpus 3 GB, 2 segments", [NEAT, "parity", B, "--corpus", str(text3), "--segments", "2"], None)
    cli("text: parity corpus 3 GB whole", [NEAT, "parity", B, "--corpus", str(text3)], "error")
    cli("text: parity corpus a FIFO", [NEAT, "parity", B, "--corpus", str(work / "fifo.json")], "error")
    cli("text: recall filler 3 GB", [NEAT, "recall", B, "--filler", str(text3), "--trials", "1", "--distances", "256"],
        None)
    cli("text: eval 3 GB --max-bytes 4096", [NEAT, "eval", B, "--data", str(text3), "--max-bytes", "4096",
                                             "--no-baselines"], None)

    # --- E. numbers on the command lines -----------------------------------------------------------------------
    numbers = [
        [*run, B, "x", "--max-bytes", "1e12"], [*run, B, "x", "--max-bytes", "99999999999"],
        [*run, B, "x", "--max-bytes", "-1"], [*run, B, "x", "--temperature", "1e308", "--max-bytes", "2"],
        [*run, B, "x", "--temperature", "inf"], [*run, B, "x", "--temperature", "nan"],
        [*run, B, "x", "--temperature", "-0.0", "--max-bytes", "2"], [*run, B, "x", "--seed", "99999999999999999999"],
        [*run, B, "x", "--seed", "-5"], [*run, B, "x", "--dispatch-bytes", "-1"],
        [*run, B, "x", "--image-scale", "100000"], [NEAT, "profile", "--batch", "1000000000000"],
        [NEAT, "profile", "--batch", "5000"], [NEAT, "profile", "--segments", "99999999999"],
        [NEAT, "recall", B, "--filler", str(text3), "--length", "1e12"],
        [NEAT, "recall", B, "--filler", str(text3), "--length", "99999999999"],
        [NEAT, "recall", B, "--filler", str(text3), "--trials", "0"],
        [NEAT, "recall", B, "--filler", str(text3), "--distances", "999999999999"],
        [NEAT, "recall", B, "--filler", str(text3), "--seed", "-1", "--trials", "1", "--distances", "256"],
        [BENCH, B, "--batch", "1000000000000"], [BENCH, B, "--batch", "99999"],
        [BENCH, "memory", "--dim", "10000000"], [BENCH, "memory", "--tokens", "9999999999"],
        [EXPORT, "--out", "{F}/o", "--segments", "99999999999"], [EXPORT, "--out", "{F}/o", "--tolerance", "nan"],
        [EXPORT, "--out", "{F}/o", "--max-batch", "99999999999", "--target", "triton"],
        [NEAT, "train", "--data", str(text3), "--out", "{F}/o", "--lr", "inf"],
        [NEAT, "train", "--data", str(text3), "--out", "{F}/o", "--batch-size", "99999999"],
        [NEAT, "train", "--data", str(text3), "--out", "{F}/o", "--max-minutes", "nan"],
        [NEAT, "parity", B, "--tolerance", "-inf"], [NEAT, "eval", B, "--data", str(text3), "--max-bytes", "0"],
    ]
    for args in numbers:
        cli("number: " + " ".join(a if len(a) < 30 else "…" + a[-20:] for a in args[1:]), args, None)

    # --- I. export staging and races ------------------------------------------------------------------------------
    cli("export: --out is a file", [EXPORT, "--out", "{F}/o", "--no-verify"], "refusing",
        setup=lambda f, a: ((f / "o").write_text("x"), a)[1])
    cli("export: --out is someone's folder", [EXPORT, "--out", "{F}/o", "--no-verify"], "refusing",
        setup=lambda f, a: ((f / "o").mkdir(), (f / "o" / "notes").write_text("x"), a)[2])
    cli("export: --out under /proc", [EXPORT, "--out", "/proc/neat-bundle", "--no-verify"], "error")

    # --- F. full filesystems -----------------------------------------------------------------------------------------
    full = tmpfs_runner()
    if full is not None:
        cli("full fs: save a new state", [*full, "256K", NEAT, "run", B, "x", "--max-bytes", "1", "--state", "/mnt/s"],
            "no space left")
        keep = (f"{NEAT} run {B} x --max-bytes 1 --state /mnt/s 2>/dev/null && sha=$(sha256sum /mnt/s) && "
                f"(dd if=/dev/zero of=/mnt/fill bs=4k 2>/dev/null; true) && {NEAT} run {B} y --max-bytes 1 --state /mnt/s;"
                ' rc=$?; [ "$(sha256sum /mnt/s)" = "$sha" ] || echo "LEFT BEHIND: the old state changed" >&2; exit $rc')
        cli("full fs: replace an old state", [*full, "2M", "sh", "-c", keep], "intact")
        cli("full fs: export", [*full, "4M", EXPORT, "--out", "/mnt/b", "--no-verify"], "error")
        cli("full fs: --json", [*full, "4K", NEAT, "run", B, "x", "--max-bytes", "1", "--json", "/mnt/x/y/o.json"],
            None)
        cli("full fs: train checkpoint", [*full, "2M", NEAT, "train", "--data", str(bundle / "neat.json"),
                                          "--out", "/mnt/c", "--steps", "2", "--batch-size", "1"], "error")
        cli("full fs: info --json", [*full, "1K", NEAT, "info", B, "--json", "/mnt/i.json"], None)

    # --- G. signals ----------------------------------------------------------------------------------------------
    for after in (0.6, 1.2, 2.5, 10.0):
        cli(f"sigint: neat run at {after}s", [*run, B, "hello", "--max-bytes", "100000"], "interrupted",
            interrupt_after=after)
    cli("sigint: neat run with --state", [*run, B, "hello", "--max-bytes", "100000", "--state", "{F}/s"],
        "interrupted", interrupt_after=10.0)
    cli("sigint: neat-export", [EXPORT, "--out", "{F}/o", "--no-verify"], "interrupted", interrupt_after=15)
    cli("sigint: neat-export, twice", [EXPORT, "--out", "{F}/o", "--no-verify"], "interrupted", interrupt_after=15,
        extra_sigint=0.05)
    cli("sigint: neat train", [NEAT, "train", "--data", str(bundle / "neat.json"), "--out", "{F}/o", "--steps",
                               "100000", "--batch-size", "1", "--save-every", "2"], "interrupted", interrupt_after=20)
    cli("sigint: neat eval", [NEAT, "eval", B, "--data", str(text3), "--max-bytes", "100000000"], "interrupted",
        interrupt_after=8)

    # --- J. the Python API (one process) ----------------------------------------------------------------------------
    api = [
        ("stream str", 's.stream("text", 4)'), ("stream NaN temperature", 's.stream(b"x", 4, temperature=math.nan)'),
        ("stream huge", 's.stream(b"x", 10**15)'), ("generate -inf", 's.generate(b"x", 4, temperature=-math.inf)'),
        ("generate bool bytes", 's.generate(b"x", True)'), ("generate float bytes", 's.generate(b"x", 2.0)'),
        ("generate max_images -1", 's.generate(b"x", 2, allow_images=True, max_images=-1)'),
        ("generate seed str", 's.generate(b"x", 2, seed="1")'),
        ("batch 10^15", 's.generate_batch([b"ab"], 10**15)'), ("batch 5000 prompts", 's.generate_batch([b"a"] * 5000, 1)'),
        ("batch of str", 's.generate_batch(["ab"], 2)'), ("batch str", 's.generate_batch("ab", 2)'),
        ("batch empty", 's.generate_batch([], 2)'), ("batch NaN", 's.generate_batch([b"a"], 2, temperature=math.nan)'),
        ("open threads -3", "open_session(bundle, threads=-3)"),
        ("open threads 10^9", "open_session(bundle, threads=10**9)"),
        ("open backend None", "open_session(bundle, backend=None)"), ("open svf_z str", 'open_session(bundle, svf_z="z")'),
        ("open svf_z NaN", "open_session(bundle, svf_z=[math.nan] * len(s.svf_z))"),
        ("open graph 3", "open_session(bundle, graph=3)"), ("open path None", "open_session(None)"),
        ("score str", 's.score("abc")'), ("score None", "s.score(None)"), ("run_segment empty", 's.run_segment(b"")'),
        ("run_segment huge", 's.run_segment(b"x" * 10**6)'), ("dispatch 123", "s.dispatch(b'x', 123)"),
        ("dispatch max_bytes 10^12", "s.dispatch(b'x', 'none', max_bytes=10**12)"),
        ("dispatch fewshot FIFO", f"s.dispatch(b'x', 'fewshot:{work / 'fifo.json'}')"),
        ("load_state 123", "s.load_state(123)"), ("save_state ''", 's.save_state("")'), ("restore {}", "s.restore({})"),
        ("append str", 's.append("abc")'), ("append tokens out of range", "s.append(np.array([10**9]))"),
        ("svf_z NaN then score", "s.svf_z = np.full_like(s.svf_z, np.nan); s.score(b'abc')"),
    ]
    if "api".startswith(opts.only) or opts.only.startswith("api"):
        proc = subprocess.run([sys.executable, "-c", API_CHILD, str(bundle), json.dumps(api)], capture_output=True,
                              timeout=600)
        rows = json.loads(proc.stdout.decode().strip().splitlines()[-1]) if proc.returncode == 0 else []
        if proc.returncode != 0:
            results.append(("api: the child", f"exit {proc.returncode}: {proc.stderr.decode()[-500:]}", 0.0))
        for name, outcome, seconds, grew in rows:
            why = outcome if outcome.startswith("FAILED") else (f"RSS +{grew:.0f} MB" if grew > RSS_LIMIT_MB else None)
            results.append((f"api: {name}", why, seconds))
            print(f"{'FAIL' if why else 'ok  '} api: {name} [{seconds:.2f}s, +{grew:.0f} MB] {outcome[:100]}")

    failed = [(n, w) for n, w, _ in results if w]
    slowest = max((s for n, w, s in results if not n.startswith(("sigint", "text: 3 GB prompt"))), default=0)
    print(f"\n{len(results)} cases, {len(results) - len(failed)} held, {len(failed)} failed; "
          f"slowest refusal/answer {slowest:.1f} s")
    for n, w in failed:
        print(f"  FAILED {n}: {w}")
    if opts.json:
        opts.json.write_text(json.dumps([{"case": n, "failure": w, "seconds": s} for n, w, s in results], indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def tmpfs_runner():
    """A command prefix that runs the rest with a tmpfs of the given size at /mnt, in a private mount
    namespace (nothing outside sees it), or None where that cannot be done here."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && echo ok"],
                           capture_output=True, text=True)
    if "ok" not in probe.stdout:
        print("no private tmpfs here: full-filesystem cases skipped (tests/test_fault_paths.py simulates ENOSPC)")
        return None
    script = ('size=$1; shift; mount -t tmpfs -o size=$size tmpfs /mnt || exit 99; "$@"; rc=$?; '
              'left=$(find /mnt \\( -name "*.partial" -o -name "*.tmp" \\) | head -3); '
              '[ -n "$left" ] && echo "LEFT BEHIND: $left" >&2; exit $rc')
    return ["unshare", "-rm", "sh", "-c", script, "sh"]


if __name__ == "__main__":
    sys.exit(main())
