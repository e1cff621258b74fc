#!/usr/bin/env bash
# Pack the corpus (scripts/fetch_data.sh's folders) for the GPU machine, which has no network and takes at
# most 64 MiB per call: one xz tarball per part of at most LIMIT MiB (default 56), each with its sha256, in
# .gpu/ (git-ignored). A corpus larger than one part goes over in successive calls (carry .gpu/PART, unpack
# it with `tar -xJf` into the same folder: the machine keeps /tmp while it is held).
#   bash scripts/pack_corpus.sh data std pydoc licenses      -> .gpu/corpus-1.tar.xz [+ -2, ...] + SHA256SUMS
set -euo pipefail
DIR=${1:?usage: pack_corpus.sh DATA_DIR FOLDER...}; shift
LIMIT=${LIMIT:-56}
mkdir -p .gpu; rm -f .gpu/corpus-*.tar.xz .gpu/SHA256SUMS
part=1; batch=()
flush() {
  [ ${#batch[@]} -eq 0 ] && return
  tar -C "$DIR" -cJf ".gpu/corpus-$part.tar.xz" "${batch[@]}"
  size=$(( $(stat -c %s ".gpu/corpus-$part.tar.xz") / 1048576 ))
  [ "$size" -le "$LIMIT" ] || { echo "error: part $part (${batch[*]}) packs to $size MiB > $LIMIT MiB" >&2; exit 1; }
  echo "corpus-$part.tar.xz: ${batch[*]} ($size MiB)"
  part=$((part + 1)); batch=()
}
for f in "$@"; do
  [ -d "$DIR/$f" ] || { echo "error: $DIR/$f is not a folder" >&2; exit 1; }
  # xz packs this corpus' text to about a quarter: start a new part before LIMIT MiB of packed bytes
  raw=$(( $(du -sb "$DIR/$f" | cut -f1) / 4 / 1048576 ))
  sum=0; for b in "${batch[@]}"; do sum=$(( sum + $(du -sb "$DIR/$b" | cut -f1) / 4 / 1048576 )); done
  [ $(( sum + raw )) -gt "$LIMIT" ] && flush
  batch+=("$f")
done
flush
(cd .gpu && sha256sum corpus-*.tar.xz > SHA256SUMS)
cat .gpu/SHA256SUMS
