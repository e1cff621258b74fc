#!/usr/bin/env bash
# Issue 27's training comparison on one GPU machine: scripts/train_peer.py of the same-size Llama and `neat
# train` of a NEAT model, each for MINUTES of wall time on the same corpus (compilation included: each starts
# with an empty inductor and Triton cache; the cosine schedule ends with the budget), one after the other
# (never side by side: they would share the GPU), each scored on the corpus' held-out English (pydoc) and
# Python (std) as soon as it is trained; then the NEAT model's `neat recall` inside attention and beyond.
#   bash scripts/pack_corpus.sh data std pydoc licenses          # here, once: .gpu/corpus-1.tar.xz
#   device call 1: STAGE=start bash scripts/gpu_train_vs_peer.sh  (carry .whl .gpu)
#   device calls 2..: STAGE=wait bash scripts/gpu_train_vs_peer.sh (within 30 s of the last: the machine is kept)
# Each call copies what is finished to $OUT (at most 8 files come back): peer.tgz / neat.tgz (weights, config,
# train log, eval JSON: `tar -xzf` and they are checkpoints), neat_recall.json, logs.txt. BENCH=1 adds two
# `neat-bench train` runs after them (base; tiny with a memory budget).
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160
STAGE=${STAGE:-start}; WAIT=${WAIT:-560}; MINUTES=${MINUTES:-10}; T0=$(date +%s); R=/tmp/vs
PRESET=${PRESET:-tiny}; BATCH=${BATCH:-1024}; SEGMENTS=${SEGMENTS:-8}; MODE=${MODE:-compile}
BUDGET=${BUDGET:-1.0}; PEER_MODE=${PEER_MODE:-compile}; BENCH_AFTER=${BENCH:-0}
mkdir -p "$R/out" "$OUT"
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
if [ ! -d /tmp/data ]; then
  (cd .gpu && sha256sum -c SHA256SUMS) || exit 1
  mkdir -p /tmp/data && for p in .gpu/corpus-*.tar.xz; do tar -xJf "$p" -C /tmp/data; done
fi
D=/tmp/data
NEAT=(python3 -c "from neat_edge.tools.cli import main; main()")
BENCH=(python3 -c "from neat_edge.tools.bench_cli import main; import sys; sys.argv[0]='neat-bench'; main()")
TRAIN_ARGS="--data $D/std $D/pydoc $D/licenses --device cuda --batch-size $BATCH --segments $SEGMENTS \
--steps 1000000 --warmup 100 --lr 2e-3 --max-minutes $MINUTES"
if [ "$STAGE" = start ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  cat > "$R/run.sh" <<RUN
cd $PWD
export TORCHINDUCTOR_CACHE_DIR=$R/cache_peer TRITON_CACHE_DIR=$R/triton_peer
python3 scripts/train_peer.py --like $PRESET $TRAIN_ARGS --step-mode $PEER_MODE \
  --out $R/peer --eval $D/pydoc $D/std --json $R/peer/peer_report.json > $R/peer.log 2>&1
rm -f $R/peer/trainer_state.safetensors; tar -C $R -czf $R/out/peer.tgz peer
export TORCHINDUCTOR_CACHE_DIR=$R/cache_neat TRITON_CACHE_DIR=$R/triton_neat
${NEAT[*]@Q} train --preset $PRESET $TRAIN_ARGS --tbptt $SEGMENTS --step-mode $MODE --memory-budget $BUDGET \
  --out $R/neat > $R/neat.log 2>&1
for f in pydoc std; do
  ${NEAT[*]@Q} eval $R/neat --backend torch:cuda --data $D/\$f --split heldout --max-bytes 131072 \
    --json $R/neat/eval_\$f.json >> $R/neat.log 2>&1
done
rm -f $R/neat/trainer_state.safetensors; tar -C $R -czf $R/out/neat.tgz neat
${NEAT[*]@Q} recall $R/neat --backend torch:cuda --filler $D/pydoc --distances 24,256,1024 --trials 32 \
  --json $R/out/neat_recall.json >> $R/neat.log 2>&1
touch $R/trained
if [ "$BENCH_AFTER" = 1 ]; then
  timeout 300 ${BENCH[*]@Q} train --preset base --batch-size 32 --segments 2 --tbptt 2 --mode $MODE --steps 5 \
    --warmup-steps 2 --device cuda --json $R/out/bench_base.json > $R/bench.log 2>&1
  timeout 300 ${BENCH[*]@Q} train --preset tiny --batch-size 1024 --mode $MODE --memory-budget 0.7 --steps 10 \
    --device cuda --json $R/out/bench_tiny_budget.json >> $R/bench.log 2>&1
fi
touch $R/done
RUN
  setsid nohup bash "$R/run.sh" > "$R/runner.log" 2>&1 < /dev/null &
fi
while [ ! -f "$R/done" ] && [ $(( $(date +%s) - T0 )) -lt "$WAIT" ]; do sleep 10; done
cp "$R"/out/* "$OUT"/ 2>/dev/null
for l in peer neat bench; do echo "==== $l.log"; tail -c 6000 "$R/$l.log" 2>/dev/null; done > "$OUT/logs.txt"
for l in peer neat bench; do tail -c 300 "$R/$l.log" 2>/dev/null | tr '\r' '\n' | tail -2; done
[ -f "$R/trained" ] && echo "TRAINED"
[ -f "$R/done" ] && echo "ALL DONE"
exit 0
