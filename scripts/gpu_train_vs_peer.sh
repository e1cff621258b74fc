#!/usr/bin/env bash
# Issue 27's training comparison on one GPU machine: `neat train` of a NEAT model and scripts/train_peer.py of
# its same-size Llama, each for MINUTES of wall time on the same corpus (compilation included: both start with
# an empty inductor cache; the cosine schedule ends with the budget), one after the other (never side by side:
# they would share the GPU), then both scored on the corpus' held-out English (pydoc) and Python (std); the
# NEAT model's `neat recall` inside attention and beyond; then two `neat-bench train` runs (base; tiny with
# a memory budget).
#   bash scripts/pack_corpus.sh data std pydoc licenses          # here, once: .gpu/corpus-1.tar.xz
#   device call 1: STAGE=start bash scripts/gpu_train_vs_peer.sh  (carry .whl .gpu)
#   device calls 2..: STAGE=wait bash scripts/gpu_train_vs_peer.sh (within 30 s of the last: the machine is kept)
# Results in $OUT: neat_eval_{pydoc,std}.json, neat_recall.json, neat_train_log.json, peer.json, bench_*.json, logs.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160
STAGE=${STAGE:-start}; WAIT=${WAIT:-560}; MINUTES=${MINUTES:-10}; T0=$(date +%s); R=/tmp/vs
PRESET=${PRESET:-tiny}; BATCH=${BATCH:-1024}; SEGMENTS=${SEGMENTS:-8}; MODE=${MODE:-regional}
BUDGET=${BUDGET:-1.0}; PEER_MODE=${PEER_MODE:-compile}
mkdir -p "$R" "$OUT"
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
TORCHINDUCTOR_CACHE_DIR=$R/cache_neat ${NEAT[*]@Q} train --preset $PRESET $TRAIN_ARGS --tbptt $SEGMENTS \
  --step-mode $MODE --memory-budget $BUDGET --out $R/neat > $R/neat.log 2>&1 \
  || { echo "== $MODE failed: compile" >> $R/neat.log; rm -rf $R/neat; TORCHINDUCTOR_CACHE_DIR=$R/cache_neat2 \
       ${NEAT[*]@Q} train --preset $PRESET $TRAIN_ARGS --tbptt $SEGMENTS --step-mode compile --out $R/neat >> $R/neat.log 2>&1; }
for f in pydoc std; do
  ${NEAT[*]@Q} eval $R/neat --backend torch:cuda --data $D/\$f --split heldout --max-bytes 131072 --json $R/neat_eval_\$f.json >> $R/neat.log 2>&1
done
${NEAT[*]@Q} recall $R/neat --backend torch:cuda --filler $D/pydoc --distances 24,256,1024 --trials 32 --json $R/neat_recall.json >> $R/neat.log 2>&1
TORCHINDUCTOR_CACHE_DIR=$R/cache_peer python3 scripts/train_peer.py --like $PRESET $TRAIN_ARGS --step-mode $PEER_MODE \
  --out $R/peer --eval $D/pydoc $D/std --json $R/peer.json > $R/peer.log 2>&1
touch $R/trained
timeout 300 ${BENCH[*]@Q} train --preset base --batch-size 32 --segments 2 --tbptt 2 --mode $MODE --steps 5 --warmup-steps 2 \
  --device cuda --json $R/bench_base.json > $R/bench.log 2>&1
timeout 300 ${BENCH[*]@Q} train --preset tiny --batch-size 1024 --mode $MODE --memory-budget 0.7 --steps 10 \
  --device cuda --json $R/bench_tiny_budget.json >> $R/bench.log 2>&1
touch $R/done
RUN
  setsid nohup bash "$R/run.sh" > "$R/runner.log" 2>&1 < /dev/null &
fi
while [ ! -f "$R/done" ] && [ $(( $(date +%s) - T0 )) -lt "$WAIT" ]; do sleep 10; done
cp "$R"/neat_eval_*.json "$R"/neat_recall.json "$R"/peer.json "$R"/bench_*.json "$OUT"/ 2>/dev/null
cp "$R"/neat/train_log.json "$OUT"/neat_train_log.json 2>/dev/null
for l in neat peer bench; do echo "==== $l.log"; tail -c 6000 "$R/$l.log" 2>/dev/null; done > "$OUT/logs.txt"  # ≤ 8 files back
for l in neat peer bench; do tail -c 300 "$R/$l.log" 2>/dev/null | tr '\r' '\n' | tail -2; done
[ -f "$R/trained" ] && echo "TRAINED"
[ -f "$R/done" ] && echo "ALL DONE"
exit 0
