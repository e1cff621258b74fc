#!/usr/bin/env bash
# The ONNX Runtime GenAI peer of docs/decode_speed.md, built offline in its own venv (GenAI's model builder
# needs transformers>=5; the project's `hf` extra pins 4.x). Everything goes under .peers/ (git-ignored).
#
#   scripts/build_genai_peer.sh [OUT] [-- builder sizes: --vocab 260 --hidden 160 --layers 6 --heads 5 --head-dim 32 --ffn 640]
#   .peers/genai-venv/bin/python scripts/genai_peer.py time OUT      # its greedy tokens/s, one JSON line
#
# The default sizes are the same-size Llama of issue 31 (2.5 M parameters); pass others to resize the peer
# to another model's parameter count.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.peers/genai-llama}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
VENV=.peers/genai-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # torch: the CPU wheel where this machine has one (PyPI's default torch pulls the CUDA libraries)
  TORCH=torch
  for w in /opt/wheels/torch-*+cpu-*.whl; do [ -f "$w" ] && TORCH=$w; done
  "$VENV/bin/pip" install -q "$TORCH" onnxruntime-genai "transformers>=5" onnx onnx-ir
fi
rm -rf "$OUT"
mkdir -p "$OUT"
"$VENV/bin/python" scripts/genai_peer.py build "$OUT" "$@"
