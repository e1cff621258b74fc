#!/usr/bin/env bash
# Trains an entropy model, then the tiny preset with entropy patching on it, in ONE GPU device call (issue 23):
# (.gpu/tiny_blt.json: tiny + patching=entropy, target_patch_len=52, patch_pooling=cross,
# memory_chunks=4) on code + general-English prose (scripts/fetch_data.sh's corpus minus wordnet/).
# The checkpoint is written straight into $OUT/blt (8 files, each < 16 MB), so whatever a cut-off call
# had saved still comes back; the entropy model is copied there first (the BLT run adds patcher.json at
# its end; `neat train ... --resume --entropy-checkpoint runs/X --out runs/X` continues it).
# Carried (ignored by git): .whl (vector-quantize-pytorch and its dependencies), .gpu/data23.tar.xz
# (tar of data/{std,pydoc,licenses,gcide,foldoc,jargon,devil,debref}), .gpu/tiny_blt.json.
# Evaluation (held-out bits/byte vs bzip2/xz, mean patch length) is done afterwards on the CPU.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=120
T0=$(date +%s); el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
ENT_STEPS=${ENT_STEPS:-200}; ENT_MIN=${ENT_MIN:-0.35}
BLT_STEPS=${BLT_STEPS:-100}; BLT_MIN=${BLT_MIN:-1.5}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/data "$OUT/blt" && tar -xJf .gpu/data23.tar.xz -C /tmp/data || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# the first folder is English: the patcher's θ is calibrated on the first 256 KiB of the training stream
DATA="/tmp/data/gcide /tmp/data/pydoc /tmp/data/std /tmp/data/foldoc /tmp/data/jargon /tmp/data/devil /tmp/data/debref /tmp/data/licenses"
NEAT=(python3 -c "from neat_edge.tools.cli import main; main()")
watch_log() { while sleep 15; do el "$(tail -c 400 "$1" | tr '\r' '\n' | grep -v '^\s*$' | tail -1)"; done; }
el "data unpacked; entropy model"
"${NEAT[@]}" train --entropy-model --preset tiny --data $DATA --device cuda --steps "$ENT_STEPS" --batch-size 64 \
  --segments 4 --tbptt 4 --lr 2e-3 --warmup 20 --max-minutes "$ENT_MIN" --out /tmp/ent > /tmp/ent.log 2>&1
tr '\r' '\n' < /tmp/ent.log | grep -v '^\s*$' | tail -3
cp /tmp/ent/entropy_config.json /tmp/ent/entropy_model.safetensors "$OUT/blt/" || exit 1
el "BLT tiny"
watch_log /tmp/blt.log & W=$!
"${NEAT[@]}" train --config .gpu/tiny_blt.json --entropy-checkpoint /tmp/ent --data $DATA --device cuda --precision fp32 \
  --steps "$BLT_STEPS" --batch-size 64 --segments 16 --tbptt 8 --lr 2e-3 --warmup 10 --save-every 25 \
  --eval-bytes 65536 --max-minutes "$BLT_MIN" --out "$OUT/blt" > /tmp/blt.log 2>&1
kill $W
tr '\r' '\n' < /tmp/blt.log | grep -v '^\s*$' | tail -4
python3 - "$OUT/blt/train_log.json" /tmp/ent/entropy_train_log.json <<'EOF'
import json, sys
for f in sys.argv[1:]:
    d = json.load(open(f))
    print(f, {k: v for k, v in d.items() if not isinstance(v, (list, dict)) and k != "command"}, d.get("patcher"))
EOF
ls -la "$OUT/blt"; el done
