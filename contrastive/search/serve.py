"""`contrastive serve --index EMB`: a local web page to search an embedded collection (FastAPI + uvicorn).

Routes (all GET unless said):
- `/?q=TEXT&k=K`: the page, with the K best images for a text query rendered on the server (no script needed);
- `POST /` (multipart form, field `image`): the same page for an uploaded query image;
- `/api/search?q=TEXT&k=K`: the hits as JSON;
- `/thumb/{id}` (a JPEG thumbnail) and `/image/{id}` (the image): by embedding id only (plain ASCII decimal),
  never by a path. Each request resolves the image's file anew (symlinks followed) and serves it only when it lies
  inside the root fixed when the collection was embedded; anything else (an id the collection does not hold, a
  `..` or absolute path in the metadata, a file replaced by a link leading out, a missing file) is 404.

An uploaded query image is refused (413) over `MAX_UPLOAD_BYTES` or `MAX_UPLOAD_PIXELS` before it is decoded, and
echoed back only as a thumbnail.

FastAPI resolves the routes' annotations in this module's namespace, so it is imported at the top: import this
module only to serve. Bound to 127.0.0.1 unless told otherwise: the page shows every image of the collection to whoever reaches it.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import socket
import sys
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, Response

from ..errors import DataError
from .query import Hit, Index

DEFAULT_K, MAX_K = 24, 200
THUMB_SIDE = 256  # longest side of a thumbnail (pixels)
MAX_UPLOAD_BYTES = 20 << 20
MAX_UPLOAD_PIXELS = 25_000_000  # a 6000 x 4000 photo; decoded RGB that is 75 MB
MAX_ID_DIGITS = 18  # ids fit an int64

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
 header { margin-bottom: 1rem; } header small { color: #666; }
 form { display: inline-flex; gap: .5rem; margin: 0 1.5rem .5rem 0; align-items: center; }
 input[type=search] { width: 22rem; padding: .35rem; }
 .query img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ccc; }
 .error { color: #b00020; }
 ol.grid { list-style: none; padding: 0; display: grid; grid-template-columns: repeat(auto-fill, 150px); gap: 12px; }
 li.hit { border: 1px solid #ddd; border-radius: 6px; padding: 6px; font-size: 12px; }
 li.hit img { width: 136px; height: 136px; object-fit: contain; image-rendering: pixelated; background: #f4f4f4; }
 .score { font-weight: 600; } .caption { color: #444; overflow-wrap: anywhere; }
</style></head>
<body>
<header><strong>contrastive search</strong> <small>{{ size }} images &middot; {{ model }}</small></header>
<form method="get" action="/"><input type="search" name="q" value="{{ q }}" placeholder="describe an image"
  autofocus><input type="number" name="k" value="{{ k }}" min="1" max="{{ max_k }}"><button>Search</button></form>
<form method="post" action="/" enctype="multipart/form-data"><input type="file" name="image" accept="image/*">
  <input type="hidden" name="k" value="{{ k }}"><button>Search by image</button></form>
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
{% if query_image %}<p class="query">query: <img src="{{ query_image }}" alt="query image"></p>{% endif %}
{% if hits is not none %}<p id="summary">{{ hits|length }} best of {{ size }}{% if q %} for &ldquo;{{ q }}&rdquo;{% endif %}</p>
<ol class="grid" id="hits">{% for h in hits %}
 <li class="hit" data-id="{{ h.id }}" data-rank="{{ h.rank }}"><a href="/image/{{ h.id }}"><img
  src="/thumb/{{ h.id }}" alt="{{ h.caption or h.path }}" loading="lazy"></a>
  <div class="score">{{ h.rank }}. {{ '%.4f' % h.score }}</div><div class="caption">{{ h.caption or h.path }}</div></li>
{% endfor %}</ol>{% endif %}
</body></html>
"""


def create_app(index: Index):
    """The FastAPI application serving `index`."""
    from jinja2 import Environment

    page = Environment(autoescape=True).from_string(PAGE)
    lock = threading.Lock()  # one query at a time through the model and the faiss index
    app = FastAPI(title="contrastive search", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(UploadLimit, limit=MAX_UPLOAD_BYTES + (64 << 10))  # the form's own fields besides the file

    def render(status: int = 200, **values) -> HTMLResponse:
        values = {"q": "", "k": DEFAULT_K, "hits": None, "error": "", "query_image": "", **values}
        html = page.render(title="contrastive search", size=len(index), model=index.manifest["model"]["name"],
                           max_k=MAX_K, **values)
        return HTMLResponse(html, status_code=status)

    def search(run, k: int) -> list[Hit]:
        with lock:
            return run(min(k, MAX_K))

    @app.get("/", response_class=HTMLResponse)
    def home(q: str = "", k: int = Query(DEFAULT_K, ge=1)):
        if not q.strip():
            return render(k=k)
        return render(q=q, k=k, hits=search(lambda n: index.search_text(q, n), k))

    @app.post("/", response_class=HTMLResponse)
    async def by_image(image: UploadFile = File(...), k: int = Form(DEFAULT_K, ge=1)):
        data = await image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return render(413, k=k, error=f"the image is larger than {MAX_UPLOAD_BYTES >> 20} MiB")
        try:
            img = decode_upload(data)
        except HTTPException as e:
            return render(e.status_code, k=k, error=e.detail)
        hits = search(lambda n: index.search_image(img, n), k)
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))  # what is echoed back: never the upload's own size
        return render(k=k, hits=hits, query_image="data:image/jpeg;base64," + base64.b64encode(jpeg(img)).decode())

    @app.get("/api/search")
    def api_search(q: str, k: int = Query(10, ge=1)):
        if not q.strip():
            raise HTTPException(400, "the text query is empty")
        return [h.to_dict() for h in search(lambda n: index.search_text(q, n), k)]

    @app.get("/thumb/{id}")
    def thumb(id: str):
        return Response(thumbnail(image_id(index, id)), media_type="image/jpeg")

    @app.get("/image/{id}")
    def image(id: str):
        i = image_id(index, id)
        try:
            found = index.read_image_file(i)
            if found is None:  # a shard member, a dataset's bytes
                return Response(png(index.open_image(i)), media_type="image/png", headers=NOSNIFF)
        except DataError:
            raise HTTPException(404, "no such image") from None
        path, data = found
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(data, media_type=media, headers=NOSNIFF)

    @lru_cache(maxsize=2048)
    def thumbnail(i: int) -> bytes:
        try:
            img = index.open_image(i)
        except DataError:
            raise HTTPException(404, "no such image") from None
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        return jpeg(img)

    return app


NOSNIFF = {"X-Content-Type-Options": "nosniff"}  # a file is shown as what its name says, never sniffed as a page


def image_id(index: Index, text: str) -> int:
    """The embedding id in a URL: plain ASCII decimal digits naming an image the collection holds, else 404 (a
    path, a sign, other scripts' digits, superscripts, thousands of digits)."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS or int(text) >= len(index):
        raise HTTPException(404, "no such image")
    return int(text)


class UploadLimit:
    """ASGI middleware: a request whose body is declared larger than `limit` bytes, or whose length is not
    declared, is refused (413, 411) before anything parses it, so no upload is spooled to disk past the limit."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            status = 411 if length is None or not length.isdigit() else 413 if int(length) > self.limit else 0
            if status:
                text = b"the upload is too large" if status == 413 else b"the upload must declare its length"
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": text})
                return
        await self.app(scope, receive, send)


def decode_upload(data: bytes):
    """Uploaded bytes -> RGB PIL image; HTTPException 413 over MAX_UPLOAD_PIXELS (read from the header, before
    decoding), 400 in one line for what is no image."""
    from ..data.bad import BadSample
    from ..data.images import decode_image

    try:
        return decode_image(data, MAX_UPLOAD_PIXELS, setting="the limit")
    except BadSample as e:
        if e.reason == "decompression_bomb":
            raise HTTPException(413, f"the image is too large to search by ({e.detail})") from None
        raise HTTPException(400, f"the uploaded file is not an image Pillow can read ({e})") from None


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one. OSError (one line) when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    return sock


def serve(emb: str | Path, host: str = "127.0.0.1", port: int = 8000, checkpoint: str | None = None,
          device: str = "cpu") -> None:
    """Load `emb` and serve its page until interrupted; prints the address (the real port when `port` is 0)."""
    import uvicorn

    index = Index.load(emb, checkpoint=checkpoint, device=device)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this machine can search and view the collection",
              file=sys.stderr)
    print(f"serving {emb} ({len(index)} images) at http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(index), log_level="warning"))
    server.run(sockets=[sock])
