"""HTTP feedback: Prometheus `/metrics`, JSON `/api/summary` and `/api/images`, a live page at `/`.

Standard-library `ThreadingHTTPServer` in a daemon thread, bound to loopback unless told
otherwise. The page is self-contained (no external scripts) and polls the JSON once a second:
spots per image, estimated resolution, ice rings, and the frame accounting.
`/api/summary?latest=N` gives the frame accounting, the number of series and the latest N
series (default 50; 0: all). `/api/images?series=ID&since=N` returns the recent per-image
records of series ID (default: of every series, oldest first) with image number > N; image
numbers start again with each series.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from streamer.errors import BadInput
from streamer.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

SUMMARY_SERIES = 50  # series in /api/summary by default: a shift's run may take hundreds


def parse_host_port(text: str) -> tuple[str, int]:
    """"HOST:PORT" (or ":PORT", or "PORT") -> (host, port); host defaults to loopback."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")
    return (host or "127.0.0.1"), number


class FeedbackServer:
    """Serves the collector's views; `summary()` and `images(limit)` are called per request."""

    def __init__(self, address: tuple[str, int], metrics: Metrics,
                 summary: Callable[..., dict[str, Any]], images: Callable[[int], list[dict[str, Any]]]):
        self.metrics, self.summary, self.images = metrics, summary, images
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server._get(self)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http %s " + fmt, self.address_string(), *args)

        try:
            self.httpd = ThreadingHTTPServer(address, Handler)
        except OSError as exc:  # in use, or not an address of this host
            raise BadInput(f"cannot serve HTTP on {address[0]}:{address[1]}: {exc}", reason="bad_argument") from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> FeedbackServer:
        self.thread.start()
        log.info("dashboard and /metrics at %s", self.url)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _get(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        query = parse_qs(parts.query)
        if parts.path == "/metrics":
            self._send(req, 200, CONTENT_TYPE, self.metrics.exposition())
        elif parts.path == "/api/summary":
            try:
                latest = int(query.get("latest", [str(SUMMARY_SERIES)])[0])
            except ValueError:
                self._send(req, 400, "text/plain; charset=utf-8", b"latest must be an integer\n")
                return
            self._send_json(req, self.summary(latest) if latest > 0 else self.summary())
        elif parts.path == "/api/images":
            try:
                since = int(query.get("since", ["-1"])[0])
                limit = min(max(int(query.get("limit", ["500"])[0]), 1), 5000)
            except ValueError:
                self._send(req, 400, "text/plain; charset=utf-8", b"since and limit must be integers\n")
                return
            series = query.get("series", [None])[0]
            images = [im for im in self.images(limit) if (series is None or im.get("series_id") == series)
                      and (im.get("image") is None or im["image"] > since)]
            self._send_json(req, {"images": images})
        elif parts.path in ("/", "/index.html"):
            self._send(req, 200, "text/html; charset=utf-8", DASHBOARD.encode())
        else:
            self._send(req, 404, "text/plain; charset=utf-8", b"not found\n")

    def _send_json(self, req: BaseHTTPRequestHandler, obj: Any) -> None:
        from streamer.summary import jsonable

        self._send(req, 200, "application/json", json.dumps(jsonable(obj)).encode())

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Cache-Control", "no-store")
        req.end_headers()
        req.wfile.write(body)


DASHBOARD = """<!doctype html>
<html><head><meta charset="utf-8"><title>xtalstream live</title>
<style>
body{font:14px system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
h1{font-size:18px} .row{display:flex;flex-wrap:wrap;gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em}
canvas{width:460px;height:200px} table{border-collapse:collapse} td{padding:2px 8px}
.bad{color:#b00}
</style></head><body>
<h1>xtalstream &mdash; live per-image feedback</h1>
<div class="row">
 <div class="card"><b>Frames</b><table id="frames"></table><div id="series"></div></div>
 <div class="card"><b>Spots per image</b><br><canvas id="spots" width="460" height="200"></canvas></div>
 <div class="card"><b>Estimated resolution (&Aring;)</b><br><canvas id="res" width="460" height="200"></canvas></div>
 <div class="card"><b>Ice rings</b><br><canvas id="ice" width="460" height="200"></canvas></div>
</div>
<script>
"use strict";
let images = [];
function plot(id, key, invert) {
  const c = document.getElementById(id), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const val = p => Array.isArray(p[key]) ? p[key].length : p[key];
  // estimated_d_min is -1 when there is no estimate (DIALS's convention): not plotted
  const pts = images.filter(p => typeof val(p) === "number" && (!invert || val(p) > 0)).map(p => [p.image, val(p)]);
  if (!pts.length) { g.fillText("no data yet", 10, 20); return; }
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) + 1, y0 = Math.min(0, ...ys), y1 = Math.max(...ys) || 1;
  const X = x => 40 + (x - x0) / (x1 - x0) * (c.width - 50);
  const Y = y => invert ? 10 + (y - y0) / (y1 - y0) * (c.height - 30) : c.height - 20 - (y - y0) / (y1 - y0) * (c.height - 30);
  g.strokeStyle = "#999"; g.strokeRect(40, 10, c.width - 50, c.height - 30);
  g.fillStyle = "#222"; g.fillText(y1.toPrecision(3), 2, invert ? c.height - 20 : 18);
  g.fillText(String(x0), 40, c.height - 5); g.fillText(String(x1 - 1), c.width - 40, c.height - 5);
  g.fillStyle = "#1565c0";
  for (const [x, y] of pts) g.fillRect(X(x) - 1, Y(y) - 1, 3, 3);
}
function esc(s) { return String(s).replace(/[&<>]/g, ch => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"}[ch])); }
async function poll() {
  try {
    const s = await (await fetch("api/summary")).json();
    const f = s.frames;
    let rows = `<tr><td>received</td><td>${f.received}</td></tr><tr><td>processed</td><td>${f.processed}</td></tr>`;
    for (const [r, n] of Object.entries(f.dropped)) rows += `<tr class="bad"><td>dropped: ${esc(r)}</td><td>${n}</td></tr>`;
    document.getElementById("frames").innerHTML = rows;
    document.getElementById("series").innerHTML = (s.series || []).map(x =>
      `${esc(x.series_id)}: ${x.closed ? "done (" + esc(x.how_ended) + ")" : "running"}` +
      (x.indexing ? ", " + (x.indexing.indexed ? "indexed " + esc(x.indexing.unit_cell)
                                               : esc(x.indexing.status || "not indexed")) : "") +
      (x.warnings || []).map(w => `<div class="bad">${esc(w.kind)}: ${esc(w.message)}<br><i>${esc(w.suggestion)}</i></div>`)
        .join("")).join("<br>");
    const im = await (await fetch("api/images?limit=2000")).json();
    const frames = im.images.filter(p => p.image !== null && p.series_id);  // not a drop outside any series
    const last = frames.length ? frames[frames.length - 1].series_id : null;  // plot the latest series
    images = frames.filter(p => p.series_id === last);
    plot("spots", "n_spots", false); plot("res", "estimated_d_min", true); plot("ice", "ice_rings", false);
  } catch (e) { document.getElementById("series").textContent = "processor not reachable"; }
}
poll(); setInterval(poll, 1000);
</script></body></html>
"""
