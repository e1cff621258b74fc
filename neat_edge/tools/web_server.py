"""A static server for a `neat-export --target web` folder on 127.0.0.1, for the browser tests and the speed
script: the right MIME types for ES modules and WebAssembly, no caching, and (isolated=True) the
cross-origin isolation headers (COOP / COEP) WebAssembly threads need. `python -m http.server` serves the
folder as well, single-threaded (browsers only share memory between threads on an isolated page)."""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


class WebFolderHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript", ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream",
                      ".safetensors": "application/octet-stream"}
    isolated = True

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        if self.isolated:
            for key, value in ISOLATION.items():
                self.send_header(key, value)
        super().end_headers()

    def log_message(self, *args):  # quiet: the tests and the speed script print what matters
        pass


@contextmanager
def serving(folder: str | Path, isolated: bool = True, port: int = 0):
    """Serve `folder` on 127.0.0.1 (a free port unless given) in a background thread; yields the base URL."""
    handler = type("Handler", (WebFolderHandler,), {"isolated": isolated})
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main() -> None:
    """python -m neat_edge.tools.web_server FOLDER [--port 8000] [--no-isolation]"""
    import argparse
    import time

    ap = argparse.ArgumentParser(description="Serve a neat-export --target web folder on 127.0.0.1 "
                                             "(cross-origin isolated: WebAssembly threads work)")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--no-isolation", action="store_true", help="without COOP / COEP (one WebAssembly thread)")
    args = ap.parse_args()
    if not (args.folder / "index.html").is_file():
        raise SystemExit(f"error: {args.folder} is not a neat-export --target web folder (no index.html)")
    with serving(args.folder, not args.no_isolation, args.port) as url:
        print(f"serving {args.folder} at {url} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
