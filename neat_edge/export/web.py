"""`neat-export --target web`: a bundle as a static folder a browser runs (ONNX Runtime Web + neat.js).

The folder is a bundle (neat.json at its top, the graphs, the initial state, the experts: Python's
open_session reads it as it reads any bundle) plus what a page needs to run it with no registry and no
server logic: ONNX Runtime Web's JavaScript and WebAssembly files, copied from the pinned npm package
(neat_edge/web/package.json + package-lock.json), the ES-module runtime (neat.js and the modules it
imports) and a demo page (index.html). What the browser does not need is left out: the PyTorch checkpoint
(10 MB the page would download and hash for nothing), other targets' artifacts, and of each decode graph
one file: its CPU rewrite where the bundle has one (ONNX Runtime Web's WebAssembly build is ONNX Runtime's
CPU execution provider, and runs it) in its web form (export/web_graphs.py), else the plain-op graph. The
manifest is rewritten to name exactly the files copied, each with its sha256, so the JS runtime's checks are
the Python reader's checks.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from neat_edge.bundle import MANIFEST, open_bundle
from neat_edge.errors import NeatError
from neat_edge.export.bundle import install_bundle, staging_dir
from neat_edge.export.web_graphs import WEB_SUFFIX, scatter_outputs
from neat_edge.fileio import atomic_write_json, sha256_file
from neat_edge.manifest import manifest_paths

WEB_SOURCES = Path(__file__).resolve().parent.parent / "web"  # neat.js & co, index.html, package.json
RUNTIME_FILES = ("neat.js", "bundle.js", "safetensors.js", "decoding.js", "dispatch.js", "sampling.js", "onnx_edit.js",
                 "index.html", "demo.js")
# ONNX Runtime Web: one module + one WebAssembly build per backend (wasm: the plain build; webgpu: the
# asyncify build with the WebGPU execution provider). Nothing else of the package's dist/ is loaded.
ORT_FILES = {"wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
             "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs",
                        "ort-wasm-simd-threaded.asyncify.wasm")}
ORT_DIR = "ort"
GRAPH_TARGET = "onnx"  # the ONNX graphs (and the decode graphs' CPU rewrite beside them): what ONNX Runtime Web runs
# contrib ops of the decode graphs' CPU rewrite that ONNX Runtime Web's WebAssembly build runs (tests/test_web.py
# checks their outputs against Python's in headless chromium); a rewrite with any other stays out, its plain graph in
WEB_CONTRIB_OPS = frozenset({"com.microsoft.RotaryEmbedding"})
DECODE_CHOICES = ("cpu", "plain")
# the decode graphs neat.js runs (model/graphs.py's); any other entry (a fused variant for one runtime) stays out
DECODE_GRAPHS = frozenset({"decode_svf", "decode_start", "decode_byte", "decode_patch", "decode_commit", "decode_chunk",
                           "decode_image_head", "entropy_decode_start", "entropy_decode_byte"})


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (neat_edge/web from a checkout's root)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def onnxruntime_web(sources: Path = WEB_SOURCES) -> tuple[Path, str]:
    """(dist folder, version) of the installed, pinned onnxruntime-web; one clear error when it is absent
    or is not the version package-lock.json pins."""
    hint = f"npm ci --prefix {shown(sources)}"
    lock = json.loads((sources / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/onnxruntime-web"]["version"]
    package = sources / "node_modules" / "onnxruntime-web"
    try:
        installed = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise NeatError(f"ONNX Runtime Web is not installed (the web target copies its files): run `{hint}` "
                        f"(onnxruntime-web {pinned}, pinned in its package-lock.json)") from None
    if installed != pinned:
        raise NeatError(f"onnxruntime-web {installed} is installed, package-lock.json pins {pinned}: run `{hint}`")
    dist = package / "dist"
    missing = [f for files in ORT_FILES.values() for f in files if not (dist / f).is_file()]
    if missing:
        raise NeatError(f"onnxruntime-web {installed} lacks {', '.join(missing)}: run `{hint}`")
    return dist, installed


def web_decode_entry(entry: dict, choice: str, contrib_ops=None) -> dict:
    """The manifest entry of one decode graph in the web folder. choice "cpu": the CPU rewrite where the
    export made one (export/onnx_fusion.py: ScatterElements cache writes, com.microsoft RotaryEmbedding;
    ONNX Runtime Web's WebAssembly build is ONNX Runtime's CPU execution provider, contrib kernels included,
    and runs it with the same outputs, faster) as `file`, its `cpu` block kept so that Python's CPU runtime
    on the folder still writes those caches in place — unless contrib_ops(file) (the graph's contrib ops) names
    one outside WEB_CONTRIB_OPS; "plain" (or that): the plain-op graph, the block dropped."""
    cpu = entry.get("cpu")
    if choice == "plain" or not isinstance(cpu, dict) or (contrib_ops and contrib_ops(cpu["file"]) - WEB_CONTRIB_OPS):
        return {k: v for k, v in entry.items() if k != "cpu"}
    return {**entry, "file": cpu["file"]}


def web_manifest(manifest: dict, precision: str, bundle_dir: Path, graphs_choice: str = "cpu",
                 contrib_ops=None) -> dict:
    """The manifest of the web folder: the ONNX graphs only (step, decode, entropy, image), in `precision`;
    no checkpoint files; `files` exactly the files those sections name."""
    graphs = manifest.get("graphs", {})
    if GRAPH_TARGET not in graphs:
        raise NeatError(f"bundle {bundle_dir} has no ONNX graph (it has: {', '.join(graphs) or 'none'}): "
                        "export it with --target onnx first")
    have = graphs[GRAPH_TARGET].get("precision")
    if have != precision:
        raise NeatError(f"bundle {bundle_dir} holds {have} ONNX graphs, not {precision}: export one with "
                        f"`neat-export --target onnx --precision {precision}`, or leave --bundle out")
    out = copy.deepcopy(manifest)
    out["graphs"] = {GRAPH_TARGET: out["graphs"][GRAPH_TARGET]}
    decode = out.get("decode")
    if decode is not None:
        if GRAPH_TARGET not in decode.get("graphs", {}):
            raise NeatError(f"bundle {bundle_dir} has decode graphs, but none in plain ONNX ops: re-export it")
        decode["graphs"] = {GRAPH_TARGET: {name: web_decode_entry(entry, graphs_choice, contrib_ops)
                                           for name, entry in decode["graphs"][GRAPH_TARGET].items()
                                           if name in DECODE_GRAPHS}}
    for section in ("patching", "images"):
        part = out.get(section)
        if isinstance(part, dict) and "graphs" in part:
            if GRAPH_TARGET not in part["graphs"]:
                raise NeatError(f"bundle {bundle_dir}: its {section} graphs have no ONNX one: re-export it")
            part["graphs"] = {GRAPH_TARGET: part["graphs"][GRAPH_TARGET]}
    named = {rel for field, rel in manifest_paths({**out, "files": {}}, bundle_dir / MANIFEST)
             if field != "checkpoint"}
    listed = manifest.get("files", {})
    unlisted = sorted(named - set(listed))
    if unlisted:
        raise NeatError(f"bundle {bundle_dir}: {unlisted[0]} is not covered by the manifest's checksums")
    out["files"] = {rel: listed[rel] for rel in sorted(named)}
    return out


def contrib_ops(path: Path) -> set[str]:
    """The ops of an ONNX graph outside the standard domain, as "domain.Op"."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    return {f"{n.domain}.{n.op_type}" for n in nodes if n.domain not in ("", "ai.onnx")}


def check_web_ops(path: Path, rel: str) -> None:
    """The standard ONNX domain, and of the contrib ops only those the browser tests run (WEB_CONTRIB_OPS):
    ONNX Runtime Web's WebAssembly build carries com.microsoft CPU kernels, but not necessarily every one, and a
    missing one would only show when the page loads the graph."""
    other = sorted(contrib_ops(path) - WEB_CONTRIB_OPS)
    if other:
        raise NeatError(f"{rel} uses {', '.join(other[:3])}, which the web runtime does not run: the web target needs "
                        "the plain-op ONNX graphs or their CPU rewrite (re-export the bundle with --target onnx)")


def web_decode_graphs(manifest: dict, staged: Path) -> None:
    """Each decode graph the folder runs as its CPU rewrite, in its web form (export/web_graphs.py: every cache
    write's rows also a graph output, for the page to write into its own caches): NAME.web.onnx in place of
    the copied NAME.cpu.onnx, the entry's `file` and `cpu.file` naming it, its `web.scatter` block, `files`
    its digest. A graph with external data stays as it is (there is none in a decode graph today)."""
    import onnx

    entries = (manifest.get("decode") or {}).get("graphs", {}).get(GRAPH_TARGET, {})
    for name, entry in entries.items():
        cpu = entry.get("cpu")
        if not isinstance(cpu, dict) or entry["file"] != cpu["file"]:
            continue
        source = staged / cpu["file"]
        model = onnx.load(str(source), load_external_data=False)
        if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
            continue
        scatter = scatter_outputs(model)
        rel = str(PurePosixPath(cpu["file"]).parent / f"{name}{WEB_SUFFIX}").removeprefix("./")
        onnx.save(model, str(staged / rel))
        source.unlink()
        del manifest["files"][cpu["file"]]
        manifest["files"][rel] = sha256_file(staged / rel)
        entry["file"] = cpu["file"] = rel
        entry["web"] = {"scatter": scatter}
    manifest["files"] = dict(sorted(manifest["files"].items()))


def write_web(bundle_dir: str | Path, out: str | Path, precision: str = "fp32", log=print, decode: str = "cpu") -> dict:
    """The web folder for a bundle at `out` (written beside it, then moved into place): returns its manifest."""
    bundle_dir, out = Path(bundle_dir), Path(out)
    dist, version = onnxruntime_web()
    bundle = open_bundle(bundle_dir)  # every check and checksum of the Python reader, before anything is copied
    if decode not in DECODE_CHOICES:
        raise NeatError(f"web decode graphs '{decode}' unknown (choose from {', '.join(DECODE_CHOICES)})")
    manifest = web_manifest(bundle.manifest, precision, bundle_dir, decode,
                            lambda rel: contrib_ops(bundle.file(rel, f"files.{rel}")))
    config = bundle.config
    # what the JS runtime cannot derive from the config dict itself: the exact JSON the fingerprint and
    # the model id hash (Python's float formatting), and two properties of NeatConfig
    manifest["web"] = {"onnxruntime_web": version, "precision": precision, "decode_graphs": decode,
                       "runtime": list(RUNTIME_FILES),
                       "config_json": config.to_json(), "vocab_size": config.vocab_size,
                       "max_patches_per_segment": config.max_patches_per_segment}
    staged = staging_dir(out)
    try:
        for rel, digest in manifest["files"].items():
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.file(rel, f"files.{rel}"), target)
            if rel.endswith(".onnx"):
                check_web_ops(target, rel)
            if sha256_file(target) != digest:  # the file changed between the check and the copy
                raise NeatError(f"bundle {bundle_dir}: {rel} changed while it was copied")
        web_decode_graphs(manifest, staged)
        for name in RUNTIME_FILES:
            shutil.copyfile(WEB_SOURCES / name, staged / name)
        (staged / ORT_DIR).mkdir()
        for name in sorted({f for files in ORT_FILES.values() for f in files}):
            shutil.copyfile(dist / name, staged / ORT_DIR / name)
        atomic_write_json(staged / MANIFEST, manifest)
        open_bundle(staged)  # what was written reads back as a bundle
        install_bundle(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    log(f"web: {out} ({size:.1f} MB: {len(manifest['files'])} bundle files, onnxruntime-web {version})")
    return manifest


def export_web(out: str | Path, bundle: str | Path | None = None, precision: str = "fp32", model=None,
               patching=None, log=print, **export_options) -> dict:
    """--target web: from `bundle`, or from `model` exported to a temporary ONNX bundle in `precision`."""
    if precision not in ("fp32", "fp16", "int8"):
        raise NeatError(f"target 'web' has no precision '{precision}' (choose from fp32, fp16, int8)")
    onnxruntime_web()  # a missing npm install is found before a minutes-long export, not after
    if bundle is not None:
        return write_web(bundle, out, precision, log)
    from neat_edge.export.pipeline import export_bundle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        source = Path(work) / "bundle"
        export_bundle(model, source, ("onnx",), log=log, patching=patching, precision=precision, **export_options)
        return write_web(source, out, precision, log)
