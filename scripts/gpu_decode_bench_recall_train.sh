#!/usr/bin/env bash
# The decode benchmark, then a recall training (issues 18 and 19), in back-to-back GPU device calls
# (a machine goes back 30 s after a call, and a training started with setsid runs on between calls while it is held):
#   STAGE=start   carried wheels + data unpacked; the decode benchmark (scripts/gpu_decode_bench.py) ->
#                 $OUT/decode_bench.json; then the recall training (issue 19's recipe) started in the
#                 background, writing to /tmp/runs/recall (resumable: --resume continues it); waits
#                 until WAIT seconds have passed since the call began
#   STAGE=wait    waits WAIT seconds, prints the training's progress
#   STAGE=finish  waits for the training to end, copies the checkpoint and logs to $OUT
# Carried (ignored by git, named in the call's carry): .whl (vector-quantize-pytorch and its dependencies),
# .gpu/data.tar.xz (scripts/fetch_data.sh's corpus), .gpu/tiny_recall.json (the model config).
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=200
STAGE=${STAGE:-start}; WAIT=${WAIT:-560}; T0=$(date +%s); RUN=/tmp/runs/recall
STEPS=${STEPS:-1400}; MINUTES=${MINUTES:-16.5}
mkdir -p /tmp/runs "$OUT"
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
[ -d /tmp/data ] || tar -xJf .gpu/data.tar.xz -C /tmp
NEAT=(python3 -c "from neat_edge.tools.cli import main; main()")
progress() { tail -c 600 /tmp/runs/train.log | tr '\r' '\n' | tail -4; }

if [ "$STAGE" = start ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  timeout 300 python3 scripts/gpu_decode_bench.py --json "$OUT/decode_bench.json" 2>&1 | tee "$OUT/decode_bench.log" | tail -12
  setsid nohup "${NEAT[@]}" train --config .gpu/tiny_recall.json --data /tmp/data/std /tmp/data/pydoc /tmp/data/licenses \
    --device cuda --precision bf16 --steps "$STEPS" --batch-size 32 --segments 32 --tbptt 32 --lr 2e-3 --warmup 100 \
    --recall-fraction 0.5 --recall-distances 200,3800 --eval-every 500 --eval-bytes 131072 --save-every 100 \
    --max-minutes "$MINUTES" --out "$RUN" > /tmp/runs/train.log 2>&1 < /dev/null &
  sleep 30; progress
fi
if [ "$STAGE" != finish ]; then
  while [ $(( $(date +%s) - T0 )) -lt "$WAIT" ]; do sleep 10; done
  progress
  exit 0
fi
while pgrep -f "neat_edge.tools.cli" > /dev/null; do sleep 5; done
progress
cp "$RUN"/config.json "$RUN"/model.safetensors "$RUN"/train_log.json "$OUT"/ 2>/dev/null
tail -c 20000 /tmp/runs/train.log > "$OUT/train.log"
ls -la "$OUT"
