#!/usr/bin/env bash
# Issue 9 on the GPU machine, from the repo root (nothing pip-installed: PYTHONPATH=. is enough).
#   1. neat-bench on the `small` preset (seeded init: timing only; or a checkpoint dir in $CKPT), PyTorch on
#      CUDA three ways, each its own process: eager, torch.compile, torch.compile mode="reduce-overhead"
#      (CUDA graphs); scoring and 512-byte generation bytes/s, step p50/p90/p99 (synchronised + CUDA events).
#   2. The Titans memory layer (small's sizes, one segment of patches) against its roofline floor on the
#      H100 (FLOPs and bytes counted by neat_edge/tools/bench_roofline.py), eager and compiled, batch 1 and 64.
# $OUT gets at most 8 files: bench_{eager,compile,cudagraphs}.json, roofline.json, summary.txt, bench.png
# (if matplotlib is there), logs.tgz. BUDGET (default 900 s): eager and the roofline have fixed timeouts, the
# torch.compile runs share what is left (a run cut by its timeout leaves no JSON; logs/steps.txt says rc=124).
# Compiling the small step takes ~210 s per variant on the H100 (4 graphs: see scripts/compile_probe.py), so
# under a 10-minute limit run it in two calls: STAGES=eager,roofline,compile then STAGES=cudagraphs.
# Without a GPU (to check the script): DEVICE=cpu MODEL=tiny RUNS=3 SEGMENTS=2 GEN=16 OUT=/tmp/issue9 bash scripts/gpu_bench.sh
set -uo pipefail
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} COLUMNS=220
OUT=${OUT:-/tmp/issue9}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; MODEL=${CKPT:-${MODEL:-small}}
RUNS=${RUNS:-50}; WARMUP=${WARMUP:-10}; SEGMENTS=${SEGMENTS:-32}; GEN=${GEN:-512}
W=${WORK:-/tmp/issue9_work}; rm -rf "$W"; mkdir -p "$W/logs"; L=$W/logs
BENCH=(python -c "from neat_edge.tools.bench_cli import main; main()")  # neat-bench, without installing
timed() { local name=$1 limit=$2; shift 2; local t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$L/$name.txt" 2>&1; local rc=$?
  echo "$name rc=$rc $(python -c "print(round($(date +%s.%N)-$t0,1))")s" | tee -a "$L/steps.txt"; tail -3 "$L/$name.txt"; }

python -c "import sys, torch, onnxruntime as o; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'onnxruntime', o.__version__)" | tee "$L/env.txt"

# every bundle write / model session imports neat_edge.model.vq (MVoT): its dependencies must be importable there
python -c "import vector_quantize_pytorch" 2>/dev/null || echo "WARNING: vector_quantize_pytorch is not importable here;" \
  "bundles cannot be written (carry it, e.g. pip install --target DIR vector-quantize-pytorch, and add DIR to PYTHONPATH)" \
  | tee -a "$L/env.txt"
if [ "$DEVICE" = cuda ]; then T=torch:cuda; VARIANTS="compile:$T:compile cudagraphs:$T:cudagraphs"
else T=torch; VARIANTS="compile:$T:compile"; fi   # CUDA graphs need a GPU
STAGES=,${STAGES:-eager,roofline,compile,cudagraphs},; has() { [[ $STAGES == *,$1,* ]]; }
VARIANTS=$(for v in $VARIANTS; do has "${v%%:*}" && echo "$v"; done)
START=$(date +%s); DEADLINE=$((START + ${BUDGET:-900}))
left() { echo $(( (DEADLINE - $(date +%s)) / ${1:-1} )); }   # seconds left (shared by $1 stages)
BENCH_ARGS=(--runs "$RUNS" --warmup "$WARMUP" --segments "$SEGMENTS" --generate-bytes "$GEN" --dispatch-generate-bytes 0
            --cache "$W/cache")
# the checkpoint-only bundle (no ONNX export: PyTorch backends only) is made once, in the shared cache, by the eager run
has eager && timed bench_eager 120 "${BENCH[@]}" "$MODEL" --backends "$T" "${BENCH_ARGS[@]}" --json "$OUT/bench_eager.json"

has roofline && timed roofline 90 python - "$MODEL" "$DEVICE" "$OUT/roofline.json" <<'PY'
import sys
from pathlib import Path
from neat_edge.config import PRESETS, NeatConfig
from neat_edge.fileio import atomic_write_json
from neat_edge.tools.bench_roofline import memory_roofline
source, device, out = sys.argv[1:]
cfg = PRESETS[source] if source in PRESETS else NeatConfig.load(Path(source) / "config.json")
rows = []
for batch in (1, 64):
    for modes in ((None,), ("default",)):  # eager first: printed (and kept) even if compiling fails or times out
        r = memory_roofline(cfg, batch, device=device, runs=20, warmup=5, compile_modes=modes)
        rows.append(r)
        f = r["floor"]
        print(f"batch {batch}: {r['cost']['flops'] / 1e6:.2f} MFLOP, {r['cost']['bytes'] / 1e6:.3f} MB, intensity "
              f"{r['cost']['arithmetic_intensity']:.1f} FLOP/B, floor {f['floor_s'] * 1e6:.2f} us ({f['bound']}-bound)")
        for mode, m in r["measured"].items():
            print(f"  {mode}: " + (m["error"] if "error" in m else
                  f"{m['median_ms'] * 1e3:.1f} us = {m['x_over_floor']:.0f}x the floor, {m['achieved_tflops']:.4f} TFLOP/s"), flush=True)
        atomic_write_json(out, {"model": cfg.name, "device": device, "rows": rows})
PY

# torch.compile (dynamic shapes: generation steps through every segment length) gets the time that is left
n=$(echo $VARIANTS | wc -w); i=0
for v in $VARIANTS; do
  name=${v%%:*}; backend=${v#*:}; limit=$(left $((n - i))); i=$((i + 1))
  timed "bench_$name" "$limit" "${BENCH[@]}" "$MODEL" --backends "$backend" "${BENCH_ARGS[@]}" --json "$OUT/bench_$name.json"
done

python - "$OUT" <<'PY' | tee "$L/bench_summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for f in sorted(out.glob("bench_*.json")):
    for r in json.loads(f.read_text())["results"]:
        rows.append(r)
        lat = r["step_latency_ms"]
        ev = r.get("step_latency_ms_cuda_events", {}).get("p50")
        print(f"{r['backend']:24s} step p50 {lat['p50']:8.3f} ms p99 {lat['p99']:8.3f} (events p50 {ev or float('nan'):.3f}) "
              f"first {r['first_call_ms']:9.1f} ms  score {r['score_bytes_per_s']:10.0f} B/s  "
              f"generate {r['generate_bytes_per_s']:8.1f} B/s  peak {r['peak_memory_mb']:.0f} MB  bpb {r['bits_per_byte']:.4f}")
try:
    from neat_edge.tools.bench_plot import plot_results
    plot_results(rows, out / "bench.png", "neat-bench on the device")
except ImportError as exc:
    print("no plot here:", exc)
PY
cat "$L/env.txt" "$L/steps.txt" "$L/bench_summary.txt" "$L/roofline.txt" > "$OUT/summary.txt" 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$W" logs
ls -la "$OUT"
