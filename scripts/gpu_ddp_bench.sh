#!/usr/bin/env bash
# Issue 21: `neat train` bytes/s on 1 vs 2 GPUs of one host (DDP over NCCL, --batch-size per rank), tiny and
# small presets; then a short FSDP2 run of tiny on 2 GPUs if time allows. Writes $OUT/ddp_bench.json.
# Run from the repo root on the 2-GPU machine (carried wheels in $WHL: vector-quantize-pytorch and its needs;
# DATA_TAR: the corpus as data.tar.xz, else the Python standard library is the data).
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
WHL=${WHL:-.whl}; OUT=${OUT:-/tmp/ddp_out}; T0=$(date +%s); RUNS=/tmp/runs
mkdir -p "$OUT" "$RUNS"
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHL"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
if [ -n "${DATA_TAR:-}" ]; then  # scripts/fetch_data.sh's corpus, carried as a tarball
  [ -d /tmp/data ] || tar -xJf "$DATA_TAR" -C /tmp
  DATA=(/tmp/data/std /tmp/data/pydoc /tmp/data/licenses)
else
  DATA=("$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')")
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "gpus", torch.cuda.device_count())'

train() {  # NAME NPROC PRESET PRECISION BATCH STEPS [more neat train options]
  local name=$1 n=$2 preset=$3 prec=$4 batch=$5 steps=$6; shift 6
  timeout 150 python3 -m neat_edge.tools.cli train --preset "$preset" --data "${DATA[@]}" --device cuda --precision "$prec" \
    --nproc "$n" --batch-size "$batch" --segments 8 --tbptt 4 --steps "$steps" --warmup 5 --eval-bytes 16384 \
    --out "$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1
  echo "$name: exit $? at $(( $(date +%s) - T0 )) s"; tail -c 300 "$RUNS/$name.log" | tr '\r' '\n' | tail -2
}
collect() {
  python3 - "$RUNS" "$OUT/ddp_bench.json" <<'PY'
import json, sys, pathlib
runs, rows = pathlib.Path(sys.argv[1]), {}
for log in sorted(runs.glob("*/train_log.json")):
    r = json.loads(log.read_text())
    o = r["options"]
    rows[log.parent.name] = {k: r.get(k) for k in ("bytes_per_second", "bytes_per_second_steady", "steps_done",
                                                   "train_seconds", "precision", "device_name", "ranks",
                                                   "heldout_bits_per_byte", "parameters")}
    rows[log.parent.name].update(batch_per_rank=o["batch_size"], segments=o["segments"], tbptt=o["tbptt"])
for p in ("tiny", "small"):
    one, two = rows.get(f"{p}_1gpu"), rows.get(f"{p}_2gpu")
    if one and two:
        rows[f"{p}_speedup"] = {k: round(two[k] / one[k], 3) for k in ("bytes_per_second", "bytes_per_second_steady")
                                if one.get(k) and two.get(k)}
pathlib.Path(sys.argv[2]).write_text(json.dumps(rows, indent=2))
print(json.dumps({k: v for k, v in rows.items() if k.endswith("speedup")}))
PY
}
# 1 GPU: tiny on GPU 0 and small on GPU 1 at once (one process each, no process group: today's trainer)
CUDA_VISIBLE_DEVICES=0 train tiny_1gpu 1 tiny fp32 64 30 &
CUDA_VISIBLE_DEVICES=1 train small_1gpu 1 small bf16 24 20 &
wait
collect
train tiny_2gpu 2 tiny fp32 64 30
collect
train small_2gpu 2 small bf16 24 20
collect
if [ $(( $(date +%s) - T0 )) -lt 200 ]; then
  train tiny_2gpu_fsdp 2 tiny fp32 64 12 --strategy fsdp
  collect
fi
for f in "$RUNS"/*.log; do tail -c 1500 "$f" > "$OUT/$(basename "$f")"; done 2>/dev/null
ls "$OUT" | head -8
