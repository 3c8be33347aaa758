"""A static HTTP server on 127.0.0.1 with single-range support, for download tests (no internet needed)."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support (206), recording the Range headers it was sent."""

    ranges: list[str | None] = []

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        path = self.translate_path(self.path)
        if not header or not header.startswith("bytes="):
            return super().do_GET()
        try:
            data = open(path, "rb").read()
        except OSError:
            return self.send_error(404)
        start = int(header[len("bytes="):].split("-")[0])
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def local_server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


