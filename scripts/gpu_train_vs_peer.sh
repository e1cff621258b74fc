#!/usr/bin/env bash
# Issue 27's training comparison on one GPU machine: `neat train` of a NEAT model and scripts/train_peer.py of
# its same-size Llama, each for MINUTES of training on the same corpus, one after the other (never side by
# side: they would share the GPU), then both scored on the corpus' held-out English (pydoc) and Python (std).
#   bash scripts/pack_corpus.sh data std pydoc licenses          # here, once: .gpu/corpus-1.tar.xz
#   device call 1: STAGE=start bash scripts/gpu_train_vs_peer.sh  (carry .whl .gpu)
#   device calls 2..: STAGE=wait bash scripts/gpu_train_vs_peer.sh (within 30 s of the last: the machine is kept)
# Results: $OUT/neat_eval_{pydoc,std}.json, $OUT/peer.json, $OUT/neat_train_log.json, the logs.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160
STAGE=${STAGE:-start}; WAIT=${WAIT:-560}; MINUTES=${MINUTES:-10}; T0=$(date +%s); R=/tmp/vs
PRESET=${PRESET:-tiny}; BATCH=${BATCH:-1024}; SEGMENTS=${SEGMENTS:-8}; MODE=${MODE:-compile}
mkdir -p "$R" "$OUT"
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
if [ ! -d /tmp/data ]; then
  (cd .gpu && sha256sum -c SHA256SUMS) || exit 1
  mkdir -p /tmp/data && for p in .gpu/corpus-*.tar.xz; do tar -xJf "$p" -C /tmp/data; done
fi
D=/tmp/data
NEAT=(python3 -c "from neat_edge.tools.cli import main; main()")
if [ "$STAGE" = start ]; then
  cat > "$R/run.sh" <<RUN
cd $PWD
${NEAT[*]@Q} train --preset $PRESET --data $D/std $D/pydoc $D/licenses --device cuda --batch-size $BATCH \
  --segments $SEGMENTS --tbptt $SEGMENTS --steps 100000 --warmup 100 --lr 2e-3 --step-mode $MODE \
  --max-minutes $MINUTES --out $R/neat > $R/neat.log 2>&1
for f in pydoc std; do
  ${NEAT[*]@Q} eval $R/neat --backend torch:cuda --data $D/\$f --split heldout --max-bytes 131072 --json $R/neat_eval_\$f.json >> $R/neat.log 2>&1
done
python3 scripts/train_peer.py --like $PRESET --data $D/std $D/pydoc $D/licenses --device cuda --batch-size $BATCH \
  --segments $SEGMENTS --steps 100000 --warmup 100 --lr 2e-3 --max-minutes $MINUTES --out $R/peer \
  --eval $D/pydoc $D/std --json $R/peer.json > $R/peer.log 2>&1
touch $R/done
RUN
  setsid nohup bash "$R/run.sh" > "$R/runner.log" 2>&1 < /dev/null &
fi
while [ ! -f "$R/done" ] && [ $(( $(date +%s) - T0 )) -lt "$WAIT" ]; do sleep 10; done
cp "$R"/neat_eval_*.json "$R"/peer.json "$OUT"/ 2>/dev/null
cp "$R"/neat/train_log.json "$OUT"/neat_train_log.json 2>/dev/null
for l in neat peer; do tail -c 8000 "$R/$l.log" > "$OUT/$l.log" 2>/dev/null; tail -c 400 "$R/$l.log" | tr '\r' '\n' | tail -3; done
[ -f "$R/done" ] && echo "ALL DONE"
exit 0
