#!/usr/bin/env bash
# `neat-bench train` on a GPU machine (issue 27), in back-to-back device calls of at most 10 minutes: the
# first call (STAGE=start) installs the carried wheels and starts the whole list of runs in the background
# (setsid: it goes on between calls while the machine is held); every call waits up to WAIT seconds and
# copies the finished JSON results into $OUT (bench_<name>.json), the check's output and the log.
# Carried (git-ignored, named in the call's carry): .whl (vector-quantize-pytorch and its dependencies).
# RUNS overrides the list: "name|neat-bench train arguments;..." (each also gets --device cuda --json).
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160
STAGE=${STAGE:-start}; WAIT=${WAIT:-540}; T0=$(date +%s); R=/tmp/trainbench
mkdir -p "$R" "$OUT"
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
BENCH=(python3 -c "from neat_edge.tools.bench_cli import main; import sys; sys.argv[0]='neat-bench'; main()")
DEFAULT_RUNS="tiny_b256_compile|train --preset tiny --batch-size 256 --mode compile --peer;\
tiny_b256_eager|train --preset tiny --batch-size 256 --mode eager --steps 5;\
tiny_b1024_compile|train --preset tiny --batch-size 1024 --mode compile --peer;\
small_b256_compile|train --preset small --batch-size 256 --segments 4 --tbptt 4 --mode compile --peer;\
tiny_b256_graphs|train --preset tiny --batch-size 256 --mode graphs;\
base_b32_compile|train --preset base --batch-size 32 --segments 2 --tbptt 2 --mode compile --steps 10"
RUNS=${RUNS:-$DEFAULT_RUNS}

if [ "$STAGE" = start ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  cat > "$R/run.sh" <<EOF
cd $PWD
timeout 400 python3 scripts/gpu_train_check.py --preset tiny --batch-size 32 --json $R/check.json > $R/check.log 2>&1
IFS=';' read -ra items <<< "$RUNS"
for item in "\${items[@]}"; do
  name=\${item%%|*}; args=\${item#*|}
  echo "== \$name: \$args" >> $R/bench.log
  timeout 900 ${BENCH[*]@Q} \$args --device cuda --json $R/bench_\$name.json >> $R/bench.log 2>&1
  echo "== \$name exit \$?" >> $R/bench.log
done
touch $R/done
EOF
  setsid nohup bash "$R/run.sh" > "$R/runner.log" 2>&1 < /dev/null &
fi
while [ ! -f "$R/done" ] && [ $(( $(date +%s) - T0 )) -lt "$WAIT" ]; do sleep 10; done
cp "$R"/bench_*.json "$R"/check.json "$OUT"/ 2>/dev/null
tail -c 60000 "$R/bench.log" > "$OUT/bench.log" 2>/dev/null
tail -c 20000 "$R/check.log" > "$OUT/check.log" 2>/dev/null
grep -h "== \|neat_over_peer\|error" "$R/bench.log" | tail -30
tail -5 "$R/check.log"
[ -f "$R/done" ] && echo "ALL DONE"
exit 0
