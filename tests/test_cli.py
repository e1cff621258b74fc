"""The CLIs as a user runs them: real processes, one-line errors, non-zero exits, no tracebacks."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from neat_edge.bundle import MANIFEST


def run(*args, stdin=None):
    exe = os.path.join(os.path.dirname(sys.executable), args[0])
    cmd = [exe if os.path.exists(exe) else shutil.which(args[0]), *args[1:]]
    return subprocess.run(cmd, capture_output=True, input=stdin, timeout=900)


def assert_clean_error(proc, needle):
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], err


def inprocess_error(main, argv: list[str], monkeypatch, capsys) -> str:
    """A CLI's `main` in this process (argv, typer, run_app; faster than a subprocess): it must exit
    non-zero with one `error:` line on stderr, which is returned."""
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def test_parity_json(bundle_dir, tmp_path):
    out = tmp_path / "parity.json"
    p = run("neat", "parity", str(bundle_dir), "--backends", "onnxruntime,torch", "--segments", "32", "--json", str(out))
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads(out.read_text())
    assert isinstance(report["reference"]["bits_per_byte"], float)
    ort = report["backends"]["onnxruntime"]
    for key in ("max_abs_logprob_diff", "bits_per_byte", "top1_agreement", "state_max_rel_diff"):
        assert isinstance(ort[key], float)
    assert ort["max_abs_logprob_diff"] <= 1e-4
    assert report["reference"]["segments"] == 32
    assert report["reference"]["mean_patch_length"] >= 1.0


def test_run_generates_and_carries_state(bundle_dir, tmp_path):
    state = tmp_path / "s.safetensors"
    p1 = run("neat", "run", str(bundle_dir), "The ", "--max-bytes", "24", "--state", str(state))
    assert p1.returncode == 0, p1.stderr.decode()
    assert len(p1.stdout) == 25 and state.is_file()
    p2 = run("neat", "run", str(bundle_dir), "", "--max-bytes", "8", "--state", str(state), "--backend", "torch")
    assert p2.returncode == 0, p2.stderr.decode()


def test_run_empty_and_non_utf8_prompts(bundle_dir, tmp_path):
    p = run("neat", "run", str(bundle_dir), "", "--max-bytes", "4")
    assert p.returncode == 0 and len(p.stdout) == 5
    p = run("neat", "run", str(bundle_dir), b"\xff\xfe\x80 caf\xe9", "--max-bytes", "4")
    assert p.returncode == 0, p.stderr.decode()
    f = tmp_path / "bin.prompt"
    f.write_bytes(bytes(range(256)) * 4)
    p = run("neat", "run", str(bundle_dir), "--prompt-file", str(f), "--max-bytes", "4")
    assert p.returncode == 0, p.stderr.decode()


def test_run_large_prompt_file(bundle_dir, tmp_path, corpus):
    f = tmp_path / "big.txt"
    f.write_bytes((corpus * 20)[: 200_000])
    p = run("neat", "run", str(bundle_dir), "--prompt-file", str(f), "--max-bytes", "4")
    assert p.returncode == 0, p.stderr.decode()


@pytest.mark.slow
def test_run_multi_megabyte_prompt(bundle_dir, tmp_path, corpus):
    f = tmp_path / "huge.txt"
    f.write_bytes((corpus * 300)[: 3_000_000])
    p = run("neat", "run", str(bundle_dir), "--prompt-file", str(f), "--max-bytes", "4")
    assert p.returncode == 0, p.stderr.decode()


def test_bad_inputs_give_one_line_errors(bundle_dir, tmp_path):
    assert_clean_error(run("neat", "run", str(tmp_path / "missing"), "hi"), "bundle not found")
    assert_clean_error(run("neat", "run", str(bundle_dir), "hi", "--backend", "tensorflow"), "unknown backend")
    corrupt = tmp_path / "state.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    assert_clean_error(run("neat", "run", str(bundle_dir), "hi", "--state", str(corrupt)), "corrupted state file")
    assert_clean_error(run("neat", "run", str(bundle_dir), "--prompt-file", str(tmp_path / "nope")),
                       "prompt file not found")

    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "step.onnx").write_bytes(b"not onnx")
    assert_clean_error(run("neat", "run", str(broken), "hi"), "corrupted")
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    m = json.loads((old / MANIFEST).read_text())
    m["format_version"] = 99
    (old / MANIFEST).write_text(json.dumps(m))
    assert_clean_error(run("neat", "parity", str(old)), "format version 99")
    assert_clean_error(run("neat", "info", "no-such-thing"), "neither a bundle")
    assert_clean_error(run("neat-export", "--target", "webgpu", "--out", str(tmp_path / "x")), "unknown target")
    assert_clean_error(run("neat-export", "--checkpoint", str(tmp_path / "nockpt"), "--out", str(tmp_path / "x")),
                       "checkpoint not found")
    assert_clean_error(run("neat", "train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "c"),
                           "--steps", "1"), "data path not found")


def test_debug_flag_shows_traceback(tmp_path):
    p = run("neat", "--debug", "run", str(tmp_path / "missing"), "hi")
    assert p.returncode != 0 and "Traceback" in p.stderr.decode()


def test_info_on_bundle_and_preset(bundle_dir, tmp_path):
    out = tmp_path / "info.json"
    p = run("neat", "info", str(bundle_dir), "--json", str(out))
    assert p.returncode == 0, p.stderr.decode()
    info = json.loads(out.read_text())
    assert info["kind"] == "bundle" and info["parity"]["passed"]
    assert run("neat", "info", "tiny").returncode == 0


def test_bench_json(bundle_dir, tmp_path):
    out = tmp_path / "bench.json"
    p = run("neat-bench", str(bundle_dir), "--runs", "3", "--warmup", "1", "--segments", "2",
            "--generate-bytes", "8", "--json", str(out))
    assert p.returncode == 0, p.stderr.decode()
    results = json.loads(out.read_text())["results"]
    assert {r["backend"] for r in results} == {"torch", "onnxruntime"}
    for r in results:
        assert r["step_latency_ms"]["p50"] > 0 and r["score_bytes_per_s"] > 0 and r["bits_per_byte"] > 0


def test_bench_memory_json(tmp_path):
    out = tmp_path / "mem.json"
    p = run("neat-bench", "memory", "--dim", "32", "--heads", "2", "--chunk", "8", "--tokens", "64", "--runs", "1",
            "--warmup", "0", "--peer-runs", "1", "--json", str(out))
    assert p.returncode == 0, p.stderr.decode()
    res = json.loads(out.read_text())
    ours = res["implementations"]["neat_edge"]
    assert ours["inference"]["tokens_per_s"] > 0 and ours["train"]["tokens_per_s"] > 0
    has_peer = "titans_pytorch" in res["implementations"]
    assert ("speedup" in res) == has_peer and ("speedup_vs_pooled" in res) == has_peer
