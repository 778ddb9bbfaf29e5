"""`contrastive serve --index EMB`: a local web page to search an embedded collection (FastAPI + uvicorn).

Routes (all GET unless said):
- `/?q=TEXT&k=K`: the page, with the K best images for a text query rendered on the server (no script needed);
- `POST /` (multipart form, field `image`): the same page for an uploaded query image;
- `/api/search?q=TEXT&k=K`: the hits as JSON;
- `/thumb/{id}` (a JPEG thumbnail) and `/image/{id}` (the image): by embedding id only, never by a path. An id the
  collection does not hold is 404; an image whose file resolves outside the collection root (a `..` or absolute
  path in the metadata, a symlink leading out) is 403.

FastAPI resolves the routes' annotations in this module's namespace, so it is imported at the top: import this
module only to serve. Bound to 127.0.0.1 unless told otherwise: the page shows every image of the collection to whoever reaches it.
"""

from __future__ import annotations

import base64
import io
import socket
import sys
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response

from ..errors import DataError
from .query import Hit, Index

DEFAULT_K, MAX_K = 24, 200
THUMB_SIDE = 256  # longest side of a thumbnail (pixels)
MAX_UPLOAD_BYTES = 20 << 20

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
        except DataError as e:
            return render(400, k=k, error=str(e))
        hits = search(lambda n: index.search_image(img, n), k)
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
        path = image_file(index, i)
        if path is not None:
            return FileResponse(path)
        return Response(png(index.open_image(i)), media_type="image/png")  # a shard member, a dataset's bytes

    @lru_cache(maxsize=2048)
    def thumbnail(i: int) -> bytes:
        try:
            img = index.open_image(i)
        except DataError:
            raise HTTPException(404, "the image cannot be read") from None
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        return jpeg(img)

    return app


def image_id(index: Index, text: str) -> int:
    """The embedding id in a URL; anything else (a path, a negative or unknown number) is 404, an image whose file
    leads outside the collection 403."""
    if not text.isdigit() or int(text) >= len(index):
        raise HTTPException(404, "no such image")
    image_file(index, int(text))
    return int(text)


def image_file(index: Index, i: int) -> Path | None:
    """The checked file of image `i` (None for images that are no file); 403 outside the collection."""
    try:
        return index.image_path(i)
    except DataError:
        raise HTTPException(403, "outside the collection") from None


def decode_upload(data: bytes):
    """Uploaded bytes -> RGB PIL image; DataError in one line for what is no image."""
    from ..data.bad import BadSample
    from ..data.images import decode_image

    try:
        return decode_image(data)
    except BadSample as e:
        raise DataError(f"the uploaded file is not an image Pillow can read ({e})") from None


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
