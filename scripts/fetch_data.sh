#!/usr/bin/env bash
# Rebuild the training corpus of docs/DATA.md in DIR (default: data/, which git ignores).
#   std/       CPython's standard-library sources (this interpreter's; 3.11.7 for the shipped models)
#   pydoc/     the Python 3.11 documentation's reST sources (Debian package python3.11-doc, PSF license)
#   licenses/  the license texts Debian ships in /usr/share/common-licenses
#   general English (issue 23), each cut into ~64 KiB files at entry / paragraph boundaries
#   (scripts/split_text.py) so that the one-file-in-twenty held-out split applies inside it:
#   gcide/     GNU Collaborative International Dictionary of English (dict-gcide; GPL-2+, from Webster 1913)
#   wordnet/   WordNet 3.0 in dictd form (dict-wn; WordNet 3.0 license, BSD-style)
#   foldoc/    Free On-line Dictionary of Computing (dict-foldoc; GFDL 1.1+)
#   jargon/    the Jargon File 4.4.7 (dict-jargon; public domain)
#   devil/     Ambrose Bierce's The Devil's Dictionary (dict-devil; public domain)
#   debref/    Debian Reference, plain-text edition (debian-reference-en; GPL-2+)
# Needs: python3, apt-get (to download, not install, the .debs: ~30 MB more for the English sources) and
# dpkg-deb. Other versions of any source give other bytes: the numbers in the README and docs/DATA.md were
# measured on exactly the versions named there. ENGLISH=0 skips the general-English sources; MORE=1 adds
# (issue 29) the Linux kernel's documentation (reST) and the standard libraries of Go, Rust, C++ and Perl:
#   kdoc/ (linux-doc-6.1, GPL-2)  go/ (golang-1.19-src, BSD-3-Clause)  rust/ (rust-src, MIT or Apache-2.0)
#   cpp/ (libstdc++-12-dev headers, GPL-3 with the GCC runtime exception)  perl/ (perl-modules-5.36, Artistic or GPL)
set -euo pipefail
DIR=${1:-data}
mkdir -p "$DIR/std" "$DIR/licenses"
STD=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
echo "std      <- $STD ($(python3 -V))"
cp "$STD"/*.py "$DIR/std/"
for d in unittest tkinter idlelib lib2to3 multiprocessing distutils ctypes encodings sqlite3 urllib wsgiref \
         xmlrpc zoneinfo curses dbm html tomllib re email json http logging xml concurrent importlib asyncio pydoc_data; do
  cp -r "$STD/$d" "$DIR/std/"
done
find "$DIR/std" -name __pycache__ -prune -exec rm -rf {} +
echo "licenses <- /usr/share/common-licenses"
cp -rL /usr/share/common-licenses/. "$DIR/licenses/"  # -L: GFDL, GPL, ... are links
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
echo "pydoc    <- python3.11-doc (apt-get download)"
(cd "$TMP" && apt-get download python3.11-doc >/dev/null)
dpkg-deb -x "$TMP"/python3.11-doc_*.deb "$TMP/x"
rm -rf "$DIR/pydoc"; cp -r "$TMP/x/usr/share/doc/python3.11/html/_sources" "$DIR/pydoc"
SETS="std pydoc licenses"
if [ "${ENGLISH:-1}" != 0 ]; then
  SPLIT="python3 $(dirname "$0")/split_text.py"
  PKGS="dict-gcide dict-wn dict-foldoc dict-jargon dict-devil debian-reference-en"
  echo "english  <- $PKGS (apt-get download)"
  (cd "$TMP" && apt-get download $PKGS >/dev/null)
  for p in $PKGS; do dpkg-deb -x "$TMP/${p}"_*.deb "$TMP/e"; done
  D=$TMP/e/usr/share/dictd
  for pair in gcide:gcide wn:wordnet foldoc:foldoc jargon:jargon devil:devil; do
    src=${pair%%:*}; dst=${pair##*:}
    rm -rf "${DIR:?}/$dst"; $SPLIT "$D/$src.dict.dz" "$DIR/$dst" "$src" --index "$D/$src.index"
  done
  rm -rf "$DIR/debref"
  $SPLIT "$TMP/e/usr/share/debian-reference/debian-reference.en.txt.gz" "$DIR/debref" debref
  SETS="$SETS gcide wordnet foldoc jargon devil debref"
fi
if [ "${MORE:-0}" != 0 ]; then
  # issue 29: technical English prose and source code in more languages, each file kept whole (the
  # one-file-in-twenty held-out split applies per file, as for std/)
  MPKGS="linux-doc-6.1 golang-1.19-src rust-src libstdc++-12-dev perl-modules-5.36"
  echo "more     <- $MPKGS (apt-get download)"
  (cd "$TMP" && apt-get download $MPKGS >/dev/null)
  for p in $MPKGS; do dpkg-deb -x "$TMP/${p}"_*.deb "$TMP/m"; done
  M=$TMP/m
  copy_tree() {  # copy_tree SRC DST FIND-ARGS...: the matching files under SRC, paths kept
    local src=$1 dst=$2 out; shift 2
    rm -rf "${DIR:?}/$dst"; mkdir -p "$DIR/$dst"; out=$(cd "$DIR/$dst" && pwd)
    (cd "$src" && find . -type f "$@" -print0 | xargs -0 cp --parents -t "$out")
  }
  copy_tree "$M/usr/share/doc/linux-doc-6.1/html/_sources" kdoc -name '*.rst.txt'
  copy_tree "$M/usr/share/go-1.19/src" go -name '*.go' -not -name '*_test.go' -not -path '*/testdata/*'
  copy_tree "$M/usr/src/rustc-1.63.0/library" rust -name '*.rs'
  copy_tree "$M/usr/include/c++/12" cpp
  copy_tree "$M/usr/share/perl/5.36" perl \( -name '*.pm' -o -name '*.pl' \)
  SETS="$SETS kdoc go rust cpp perl"
fi
for s in $SETS; do
  printf '%-9s %6d files %12d bytes\n' "$s" "$(find "$DIR/$s" -type f | wc -l)" "$(find "$DIR/$s" -type f -printf '%s\n' | awk '{n+=$1} END {print n}')"
done
