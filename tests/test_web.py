"""`neat-export --target web` in a real browser: headless Debian chromium driven by Playwright opens the
exported page from a local server and runs neat.js against the Python session on ONNX Runtime (same
bundle, same bytes): greedy generation and scores, state files both ways, the page's IndexedDB memory
across a reload, and tampered bundles refused by both readers."""

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from neat_edge.errors import NeatError
from neat_edge.export.web import WEB_SOURCES, export_web, onnxruntime_web
from neat_edge.runtimes import open_session
from neat_edge.tools.web_server import serving

CHROMIUM = Path("/usr/bin/chromium")
# a quiet, offline headless browser: nothing it does reaches outside 127.0.0.1
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TOL = 1e-4


def test_missing_onnxruntime_web_is_one_clear_error(tmp_path):
    shutil.copy(WEB_SOURCES / "package-lock.json", tmp_path)
    with pytest.raises(NeatError, match=rf"not installed .*npm ci --prefix {tmp_path}"):
        onnxruntime_web(tmp_path)


@pytest.mark.parametrize("args, needle", [
    (["--precision", "fp16"], "holds fp32 ONNX graphs, not fp16"),
    (["--preset", "tiny"], "--bundle packs an exported bundle"),
])
def test_web_export_errors_are_one_line(bundle_dir, tmp_path, monkeypatch, capsys, args, needle):
    from neat_edge.tools.export_cli import main
    from tests.test_cli import inprocess_error

    argv = ["neat-export", "--target", "web", "--bundle", str(bundle_dir), "--out", str(tmp_path / "site"), *args]
    assert needle in inprocess_error(main, argv, monkeypatch, capsys)
    assert not (tmp_path / "site").exists()


@pytest.fixture(scope="module")
def web_dir(bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("web") / "site"
    export_web(out, bundle=bundle_dir, log=lambda *_: None)
    return out


def scatter_rows(cache: np.ndarray, index: np.ndarray, rows: np.ndarray, axis: int) -> np.ndarray:
    """ONNX ScatterElements (no reduction) in numpy: what decoding.js's writeRows does in the page."""
    out = cache.copy()
    where = list(np.indices(rows.shape))
    where[axis] = index
    out[tuple(where)] = rows
    return out


def test_web_decode_graphs_return_their_cache_writes_as_rows(web_dir):
    """The folder runs each decode graph's CPU rewrite (contrib ops the web build has, no others) in its web
    form: writing the `web.scatter` rows a run returns into the cache it was fed gives, bit for bit, the whole
    next cache the graph returns too; the spec's outputs are all still there, so Python reads the folder."""
    import onnx
    import onnxruntime as ort

    from neat_edge.export.web import WEB_CONTRIB_OPS

    manifest = json.loads((web_dir / "neat.json").read_text())
    entries = manifest["decode"]["graphs"]["onnx"]
    assert manifest["web"]["decode_graphs"] == "cpu"
    assert not any(rel.endswith(".cpu.onnx") for rel in manifest["files"])  # one file per graph: the web form
    for name in ("decode_byte", "decode_patch"):
        entry = entries[name]
        assert entry["file"] == entry["cpu"]["file"] == f"{name}.web.onnx"
        scatter = entry["web"]["scatter"]
        assert len(scatter) >= len(entry["cpu"]["in_place"]) - 1  # every cache write but the token's
        model = onnx.load(str(web_dir / entry["file"]))
        ops = {f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}
        assert ops and ops <= WEB_CONTRIB_OPS
        session = ort.InferenceSession(str(web_dir / entry["file"]), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)  # any caches and weights: the contract holds for every input
        feeds = {}
        for t in entry["inputs"]:
            shape = [1 if d == "batch" else d for d in t["shape"]]
            feeds[t["name"]] = (rng.standard_normal(shape).astype(np.float32) if t["dtype"] == "float32"
                                else np.full(shape, 5, np.int64))
        names = [t["name"] for t in entry["outputs"]]
        written = sorted({v for s in scatter.values() for v in (s["index"], s["rows"])})
        values = dict(zip(names + written, session.run(names + written, feeds)))
        for out, s in scatter.items():
            cache = feeds["cache." + out.removeprefix("next_cache.")]
            np.testing.assert_array_equal(scatter_rows(cache, values[s["index"]], values[s["rows"]], s["axis"]),
                                          values[out])


def test_web_export_keeps_the_plain_graphs_when_asked_or_when_the_rewrite_has_other_contrib_ops(bundle_dir, tmp_path,
                                                                                                 monkeypatch, corpus):
    """decode="plain", or a CPU rewrite with a contrib op the browser tests do not run: each decode graph's plain-op
    file, without the `cpu` and `web` blocks; Python generates the same bytes from either folder."""
    import neat_edge.export.web as web

    plain = web.write_web(bundle_dir, tmp_path / "plain", decode="plain", log=lambda *_: None)
    assert plain["web"]["decode_graphs"] == "plain"
    monkeypatch.setattr(web, "WEB_CONTRIB_OPS", frozenset())  # RotaryEmbedding no longer among the tested ones
    strict = web.write_web(bundle_dir, tmp_path / "strict", log=lambda *_: None)
    for manifest in (plain, strict):
        for name, entry in manifest["decode"]["graphs"]["onnx"].items():
            assert entry["file"] == f"{name}.onnx" and "cpu" not in entry and "web" not in entry
    prompt = corpus[:150]
    assert (open_session(tmp_path / "plain", "onnxruntime", threads=1).generate(prompt, 64)
            == open_session(bundle_dir, "onnxruntime", threads=1).generate(prompt, 64))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): no browser to test in")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright for Python is not installed (pip install -e '.[web]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(web_dir):
    with serving(web_dir) as url:
        yield url


def open_page(browser, url, context=None):
    """The demo page at `url`, its session open (window.neatDemo)."""
    page = (context or browser.new_context()).new_page()
    page.set_default_timeout(240_000)
    page.goto(url + "index.html")
    page.evaluate("() => window.neatDemo.ready")
    return page


JS_WRITE_ROWS = """async (cases) => {
  const { writeRows } = await import("./decoding.js");
  const T = window.neatDemo.session.T;
  return cases.map(([dims, shape, slots, rows, axis, seed]) => {
    const cache = T("float32", Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => seed + i), dims);
    const write = (dtype, data) => T(dtype, data, shape);
    writeRows(cache, write("int64", BigInt64Array.from(slots, BigInt)), write("float32", Float32Array.from(rows)), axis);
    return Array.from(cache.data); }); }"""


def test_write_rows_in_the_page_is_scatter_elements(browser, site):
    """decoding.js's writeRows is ONNX ScatterElements: one row per slot (the export's cache writes, the block-copy
    path), slots differing along a line, the last axis written, negative slots."""
    rng = np.random.default_rng(1)
    cases = []
    for dims, shape, axis, uniform in [((1, 4, 16, 8), (1, 4, 1, 8), 2, True), ((1, 4, 16, 8), (1, 4, 2, 8), 2, False),
                                       ((1, 2, 32), (1, 2, 3), 2, False), ((2, 5, 3), (2, 2, 3), 1, True)]:
        slots = rng.integers(-dims[axis], dims[axis], size=shape)
        if uniform:
            slots = np.broadcast_to(slots[..., :1], shape).copy()
        rows = rng.standard_normal(shape).astype(np.float32)
        cases.append((dims, shape, slots, rows, axis))
    page = open_page(browser, site)
    got = page.evaluate(JS_WRITE_ROWS, [[list(d), list(s), sl.ravel().tolist(), r.ravel().tolist(), a, 0.5]
                                        for d, s, sl, r, a in cases])
    for (dims, _, slots, rows, axis), out in zip(cases, got):
        cache = (0.5 + np.arange(np.prod(dims))).astype(np.float32).reshape(dims)
        np.testing.assert_array_equal(np.array(out, np.float32).reshape(dims), scatter_rows(cache, slots, rows, axis))
    page.context.close()


JS_STREAM = """async ([prompt, n]) => {
  const s = window.neatDemo.session; s.reset();
  const bytes = [], logprobs = [];
  for await (const [b, lp] of s.stream(Uint8Array.from(prompt), n)) { bytes.push(b); logprobs.push(lp); }
  return [bytes, logprobs, s.position]; }"""


def test_greedy_generation_and_scores_match_python(browser, site, web_dir, corpus):
    """≥ 512 greedy bytes across several segment boundaries: the same bytes as the Python session on ONNX
    Runtime, their log-probs within 1e-4; score() of a stream the same way."""
    page = open_page(browser, site)
    prompt, n = corpus[:200], 600  # 200 + 600 bytes: six segments of 128 committed along the way
    js_bytes, js_logprobs, position = page.evaluate(JS_STREAM, [list(prompt), n])
    py = open_session(web_dir, "onnxruntime", threads=1)
    py_bytes, py_logprobs = py.generate(prompt, n, return_logprobs=True)
    assert position == len(prompt) + n == py.position
    assert bytes(js_bytes) == py_bytes
    assert np.max(np.abs(np.array(js_logprobs) - py_logprobs)) <= TOL
    text = corpus[1000:1300]
    js_scores = page.evaluate("async (t) => { const s = window.neatDemo.session; s.reset(); "
                              "return Array.from(await s.score(Uint8Array.from(t))); }", list(text))
    py.reset()
    assert np.max(np.abs(np.array(js_scores) - py.score(text))) <= TOL
    page.context.close()


JS_SAVE = """async (data) => { const s = window.neatDemo.session; s.reset(); await s.score(Uint8Array.from(data));
  const file = await s.saveState(); let text = ""; for (const b of file) text += String.fromCharCode(b);
  return [btoa(text), Array.from(await s.nextByteLogprobs())]; }"""
JS_LOAD = """async (b64) => { const s = window.neatDemo.session;
  const file = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try { await s.loadState(file); } catch (e) { return [e.name, e.message]; }
  return [s.position, Array.from(await s.nextByteLogprobs())]; }"""


def test_state_files_cross_between_browser_and_python(browser, site, web_dir, corpus, tmp_path):
    """saveState in the page -> load_state in Python gives the same next-byte distribution, and back;
    a state file with one flipped byte is refused by its digest."""
    page = open_page(browser, site)
    b64, js_next = page.evaluate(JS_SAVE, list(corpus[:300]))  # two committed segments + 44 pending bytes
    state = tmp_path / "from_browser.safetensors"
    state.write_bytes(base64.b64decode(b64))
    py = open_session(web_dir, "onnxruntime", threads=1)
    py.load_state(state)
    assert py.position == 300
    assert np.max(np.abs(py.next_byte_logprobs() - np.array(js_next))) <= TOL
    py.score(corpus[300:500])  # the Python side moves the stream on (one more commit), then hands it back
    back = tmp_path / "from_python.safetensors"
    py.save_state(back)
    position, js_after = page.evaluate(JS_LOAD, base64.b64encode(back.read_bytes()).decode())
    assert position == 500
    assert np.max(np.abs(np.array(js_after) - py.next_byte_logprobs())) <= TOL
    flipped = bytearray(back.read_bytes())
    flipped[-3] ^= 0x01
    name, message = page.evaluate(JS_LOAD, base64.b64encode(bytes(flipped)).decode())
    assert name == "NeatError" and "does not match its digest" in message
    page.context.close()


def test_page_reload_restores_memory_from_indexeddb(browser, site):
    """The demo page saves the stream after a generation; a reload loads it back (memory and all);
    "Forget" clears it."""
    context = browser.new_context()
    page = open_page(browser, site, context)
    assert page.evaluate("() => window.neatDemo.restored") is False
    prompt = "The memory of this page outlives a reload. " * 4  # 172 bytes: one committed segment
    page.fill("#prompt", prompt)
    page.fill("#count", "40")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('saved to IndexedDB')")
    before = page.evaluate("async () => { const s = window.neatDemo.session; "
                           "return [s.position, Array.from(await s.nextByteLogprobs())]; }")
    assert before[0] == len(prompt.encode()) + 40
    page.reload()
    page.evaluate("() => window.neatDemo.ready")
    assert page.evaluate("() => window.neatDemo.restored") is True
    after = page.evaluate("async () => { const s = window.neatDemo.session; "
                          "return [s.position, Array.from(await s.nextByteLogprobs())]; }")
    assert after[0] == before[0]
    assert np.max(np.abs(np.array(after[1]) - np.array(before[1]))) <= 1e-6
    assert "memory restored from IndexedDB" in page.text_content("#status")
    page.click("#forget")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('forgotten')")
    page.reload()
    page.evaluate("() => window.neatDemo.ready")
    assert page.evaluate("() => [window.neatDemo.restored, window.neatDemo.session.position]") == [False, 0]
    context.close()


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "neat.json").read_text())
    edit(manifest)
    (folder / "neat.json").write_text(json.dumps(manifest))


def decode_byte_file(folder: Path) -> str:
    """the file the web folder runs as decode_byte (its web form, export/web_graphs.py)"""
    return json.loads((folder / "neat.json").read_text())["decode"]["graphs"]["onnx"]["decode_byte"]["file"]


def flip_byte(folder: Path) -> str:
    rel = decode_byte_file(folder)
    data = bytearray((folder / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / rel).write_bytes(bytes(data))
    return f"{rel} differs from the manifest (sha256 mismatch)"


def path_outside(folder: Path) -> str:
    edit_manifest(folder, lambda m: m["graphs"]["onnx"].update(file="../step.onnx"))
    return "a path outside the bundle: refused"


def absolute_path(folder: Path) -> str:
    edit_manifest(folder, lambda m: m["experts"][0].update(file="/etc/passwd"))
    return "a path outside the bundle: refused"


def listed_outside(folder: Path) -> str:
    edit_manifest(folder, lambda m: m["files"].update({"experts/../../outside.bin": "0" * 64}))
    return "a path outside the bundle: refused"


def unlisted_graph(folder: Path) -> str:
    rel = decode_byte_file(folder)
    edit_manifest(folder, lambda m: m["files"].pop(rel))
    return f"{rel} is not listed in the manifest's checksums (an unverified file): refused"


def other_graph_resigned(folder: Path) -> str:
    """step.onnx replaced by another graph, the checksums re-signed: its inputs give it away"""
    (folder / "step.onnx").write_bytes((folder / "image_decoder.onnx").read_bytes())
    digest = hashlib.sha256((folder / "step.onnx").read_bytes()).hexdigest()
    edit_manifest(folder, lambda m: m["files"].update({"step.onnx": digest}))
    return "disagrees with the manifest"


def bad_digest(folder: Path) -> str:
    edit_manifest(folder, lambda m: m["files"].update({"step.onnx": "not a digest"}))
    return "'files.step.onnx' must be a sha256 digest"


def future_version(folder: Path) -> str:
    edit_manifest(folder, lambda m: m.update(format_version=2))
    return "has format version 2"


@pytest.mark.parametrize("tamper", [flip_byte, path_outside, absolute_path, listed_outside, unlisted_graph,
                                    other_graph_resigned, bad_digest, future_version])
def test_tampered_bundles_are_refused_in_the_browser(browser, web_dir, tmp_path, tamper):
    """Both readers refuse the same hostile bundle with one clear error, the page before it runs anything."""
    folder = tmp_path / "site"
    shutil.copytree(web_dir, folder)
    why = tamper(folder)
    with pytest.raises(NeatError, match=re.escape(why)):
        open_session(folder, "onnxruntime", threads=1).generate(b"x", 1)  # the decode graphs are opened lazily
    with serving(folder) as url:
        page = browser.new_context().new_page()
        page.goto(url + "index.html")
        name, message = page.evaluate("async () => { try { await window.neatDemo.ready; return ['opened', '']; } "
                                      "catch (e) { return [e.name, e.message]; } }")
        assert name == "NeatError" and why in message
        assert page.text_content("#status") == f"error: {message}"
        page.context.close()


def test_a_bad_cache_write_in_the_manifest_is_refused_in_the_page(browser, web_dir, tmp_path):
    """web.scatter is the page's alone (Python fetches whole caches): an axis outside the cache, or a write naming
    no cache output, is one NeatError when the graph opens, never a silently misplaced row."""
    for bad, why in [(lambda sc, first: sc[first].update(axis=9), "with its index, rows and axis"),
                     (lambda sc, first: sc.update({"hidden": sc.pop(first)}), "names 'hidden'")]:
        folder = tmp_path / f"site{len(why)}"
        shutil.copytree(web_dir, folder)

        def edit(m, bad=bad):
            scatter = m["decode"]["graphs"]["onnx"]["decode_byte"]["web"]["scatter"]
            bad(scatter, sorted(scatter)[0])
        edit_manifest(folder, edit)
        with serving(folder) as url:
            page = open_page(browser, url)
            name, message = page.evaluate("async () => { try { await window.neatDemo.session.generate("
                                          "Uint8Array.of(65), 1); return ['ran', '']; } "
                                          "catch (e) { return [e.name, e.message]; } }")
            assert name == "NeatError" and "web.scatter of decode_byte.web.onnx" in message and why in message
            page.context.close()


JS_DISPATCH = """async ([prompt, strategy, text]) => {
  const s = window.neatDemo.session; s.reset(); await s.score(Uint8Array.from(prompt.slice(0, 150)));
  const result = await s.dispatch(Uint8Array.from(prompt), strategy, 400);
  const scores = await s.score(Uint8Array.from(text));
  const next = [];
  for await (const [b, lp] of s.stream(new Uint8Array(0), 140)) next.push(lp);  // the decode graphs at this z
  return [result.weights, result.pass1Bytes, Array.from(scores), next]; }"""


@pytest.mark.parametrize("strategy", ["classifier", pytest.param("expert:prose=0.3,python=0.7", marks=pytest.mark.slow)])
def test_two_pass_dispatch_matches_python(browser, site, web_dir, corpus, strategy):
    """Transformer² in the page: the expert mixture pass 1 chooses (the dispatch head, or fixed weights of
    the bundle's experts), then scores and decoding at that z: all as the Python session's."""
    page = open_page(browser, site)
    prompt, text = corpus[2000:2600], corpus[3000:3200]
    weights, seen, scores, logprobs = page.evaluate(JS_DISPATCH, [list(prompt), strategy, list(text)])
    py = open_session(web_dir, "onnxruntime", threads=1)
    py.score(prompt[:150])
    result = py.dispatch(prompt, strategy, max_bytes=400)
    assert weights.keys() == result.weights.keys() and seen == result.pass1_bytes
    assert all(abs(weights[k] - w) <= 1e-5 for k, w in result.weights.items())
    assert np.max(np.abs(np.array(scores) - py.score(text))) <= TOL
    _, py_logprobs = py.generate(b"", 140, return_logprobs=True)
    assert np.max(np.abs(np.array(logprobs) - py_logprobs)) <= TOL
    page.context.close()


@pytest.mark.slow
def test_entropy_patching_and_memory_chunks_match_python(browser, corpus, tmp_path):
    """A micro BLT (entropy patching: the entropy model's graphs beside the step and decode graphs; memory
    written in two chunks per segment, MAG window): generation, scores and a state file as Python's."""
    from neat_edge.export.pipeline import export_bundle
    from tests.test_decoding import micro_model

    model, patching = micro_model("mag", "entropy", corpus)
    export_bundle(model, tmp_path / "bundle", log=lambda *_: None, patching=patching, segments=8)
    export_web(tmp_path / "site", bundle=tmp_path / "bundle", log=lambda *_: None)
    py = open_session(tmp_path / "site", "onnxruntime", threads=1)
    prompt, n = corpus[:50], 200  # segments of 32 bytes: seven commits, patches closed by the entropy model
    py_bytes, py_logprobs = py.generate(prompt, n, return_logprobs=True)
    with serving(tmp_path / "site") as url:
        page = open_page(browser, url)
        js_bytes, js_logprobs, _ = page.evaluate(JS_STREAM, [list(prompt), n])
        assert bytes(js_bytes) == py_bytes
        assert np.max(np.abs(np.array(js_logprobs) - py_logprobs)) <= TOL
        b64, js_next = page.evaluate(JS_SAVE, list(corpus[100:180]))
        state = tmp_path / "state.safetensors"
        state.write_bytes(base64.b64decode(b64))
        py.load_state(state)
        assert np.max(np.abs(py.next_byte_logprobs() - np.array(js_next))) <= TOL
        page.context.close()
