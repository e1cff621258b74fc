#!/usr/bin/env bash
# Rebuild the training corpus of docs/DATA.md in DIR (default: data/, which git ignores).
#   std/       CPython's standard-library sources (this interpreter's; 3.11.7 for the shipped models)
#   pydoc/     the Python 3.11 documentation's reST sources (Debian package python3.11-doc, PSF license)
#   licenses/  the license texts Debian ships in /usr/share/common-licenses
# Needs: python3, apt-get (to download, not install, one .deb) and dpkg-deb. Other versions of either
# source give other bytes: the numbers in the README were measured on exactly the versions named above.
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
for s in std pydoc licenses; do
  printf '%-9s %6d files %12d bytes\n' "$s" "$(find "$DIR/$s" -type f | wc -l)" "$(find "$DIR/$s" -type f -printf '%s\n' | awk '{n+=$1} END {print n}')"
done
