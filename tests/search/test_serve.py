"""The search page: results against a brute-force search over the stored vectors, image files served only by id
and never from outside the collection, and the page in a real headless Chromium."""

import csv
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import contrastive
from contrastive.cli import main
from contrastive.search import Index, embed_collection, torch_encoder
from tests.conftest import PYTHON, subprocess_env
from tests.search.helpers import shapes_table

N = 24  # good images in the collection (ids 0..N-1 = rows); three more rows lead out of it


@pytest.fixture(scope="module")
def collection(tiny_run, tmp_path_factory):
    """(EMB, folder, secret file, ids that lead outside) for 24 shapes images of a table whose last three rows lead
    out of its folder (`../secret.jpg`, the secret's absolute path, a symlink to it): skipped when embedding. Then,
    as a collection changes after embedding, image 3 is replaced by a symlink to the secret, image 4 by a symlink
    to image 5 (inside), and two rows of the stored metadata are rewritten to a `..` path and an absolute path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("serve")
    table = shapes_table(tmp / "collection", N, copy=True)
    folder = table.parent
    secret = tmp / "secret.jpg"
    shutil.copy(folder / "images/00000.jpg", secret)
    secret.write_bytes(secret.read_bytes() + b"SECRET")  # still a JPEG, and recognisable in a response
    (folder / "images/link.jpg").symlink_to(secret)
    lines = table.read_text().splitlines()
    caption = lines[1][lines[1].index(","):]
    table.write_text("\n".join([*lines, *(p + caption for p in ("../secret.jpg", str(secret), "images/link.jpg"))])
                     + "\n")
    emb = tmp / "emb"
    manifest = embed_collection(str(table), emb, torch_encoder(tiny_run), workers=0, progress=False)
    assert manifest["counts"]["embedded"] == N and manifest["bad"]["counts"] == {"outside_root": 3}
    assert manifest["collection"]["root"] == str(folder)
    (folder / "images/00003.jpg").unlink()
    (folder / "images/00003.jpg").symlink_to(secret)
    (folder / "images/00004.jpg").unlink()
    (folder / "images/00004.jpg").symlink_to(folder / "images/00005.jpg")
    shard = next((emb / "shards").glob("*.parquet"))
    meta = pq.read_table(shard).to_pydict()
    meta["path"][1] = "../secret.jpg"
    meta["path"][2] = str(secret)
    pq.write_table(pa.Table.from_pydict(meta, schema=pq.read_schema(shard)), shard)
    return emb, folder, secret, {1, 2, 3}


@pytest.fixture(scope="module")
def client(collection):
    from fastapi.testclient import TestClient

    from contrastive.search.serve import create_app

    return TestClient(create_app(Index.load(collection[0])))


def assert_brute_force_ranking(tiny_run, emb, text, ids):
    """`ids` are the len(ids) stored vectors closest to the text, best first, by a dense matrix product (the naive
    reference); compared by score so that ties may come in either order."""
    from contrastive.search import store

    model, _, tokenizer = contrastive.load(tiny_run)
    with torch.no_grad():
        query = model.encode_text(tokenizer([text]))[0].numpy()
    scores = store.load_vectors(emb, store.read_manifest(emb)) @ query  # (N,)
    assert len(set(ids)) == len(ids) > 0
    np.testing.assert_allclose(scores[ids], np.sort(scores)[::-1][: len(ids)], rtol=0, atol=1e-5)


def page_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="hit" data-id="(\d+)"', html)]


def test_text_query_page_is_rendered_on_the_server(tiny_run, collection, client):
    emb, folder, _, _ = collection
    with open(folder / "images.csv", newline="") as f:
        caption = list(csv.DictReader(f))[4]["caption"]
    r = client.get("/", params={"q": "a red circle", "k": 5})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_brute_force_ranking(tiny_run, emb, "a red circle", page_ids(r.text))
    assert len(page_ids(r.text)) == 5
    assert "&ldquo;a red circle&rdquo;" in r.text and r.text.count('src="/thumb/') == 5
    # the JSON route gives the same hits with their scores; markup in a query is escaped on the page
    hits = client.get("/api/search", params={"q": caption, "k": 3}).json()
    assert_brute_force_ranking(tiny_run, emb, caption, [h["id"] for h in hits])
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert "<script>x" not in client.get("/", params={"q": "<script>x</script>"}).text
    assert page_ids(client.get("/").text) == []  # no query: the form only


def test_image_query_finds_the_image_itself(collection, client):
    _, folder, _, _ = collection
    data = (folder / "images/00007.jpg").read_bytes()
    r = client.post("/", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "4"})
    assert r.status_code == 200 and page_ids(r.text)[0] == 7 and len(page_ids(r.text)) == 4
    assert float(re.search(r'class="score">1\. ([0-9.]+)<', r.text).group(1)) > 0.999
    bad = client.post("/", files={"image": ("q.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 400 and "not an image" in re.search(r'id="error">([^<]*)<', bad.text).group(1)


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming `width` x `height` grey pixels, with one byte of image data: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_uploads_are_bounded_and_echoed_as_thumbnails(client):
    import base64
    import io

    from PIL import Image

    from contrastive.search.serve import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, THUMB_SIDE

    big = io.BytesIO()
    Image.new("RGB", (3000, 1000), (200, 30, 30)).save(big, format="PNG")
    r = client.post("/", files={"image": ("big.png", big.getvalue(), "image/png")}, data={"k": "3"})
    assert r.status_code == 200 and len(page_ids(r.text)) == 3
    echoed = base64.b64decode(re.search(r'src="data:image/jpeg;base64,([^"]+)"', r.text).group(1))
    with Image.open(io.BytesIO(echoed)) as shown:
        assert max(shown.size) <= THUMB_SIDE and shown.size == (THUMB_SIDE, THUMB_SIDE // 3)
    side = int(MAX_UPLOAD_PIXELS**0.5) + 100  # over the upload limit, under Pillow's own
    for w, h in ((side, side), (100_000, 100_000)):
        r = client.post("/", files={"image": ("bomb.png", png_header(w, h), "image/png")})
        assert r.status_code == 413 and "too large" in re.search(r'id="error">([^<]*)<', r.text).group(1), (w, h)
    r = client.post("/", files={"image": ("huge.jpg", b"\0" * (MAX_UPLOAD_BYTES + (1 << 20)), "image/jpeg")})
    assert r.status_code == 413
    r = client.post("/", content=iter([b"--x\r\n"] * 3), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 411  # no declared length: refused before anything is read


def test_images_are_served_by_id_and_never_from_outside_the_collection(collection, client):
    _, folder, secret, outside = collection
    r = client.get("/image/0")
    assert r.status_code == 200 and r.content == (folder / "images/00000.jpg").read_bytes()
    assert r.headers["content-type"] == "image/jpeg" and r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/thumb/0").headers["content-type"] == "image/jpeg"
    assert client.get("/image/4").content == (folder / "images/00005.jpg").read_bytes()  # a link inside: served
    for i in outside:  # `..` in the metadata, an absolute path in it, a file replaced by a symlink leading out
        for route in ("image", "thumb"):
            r = client.get(f"/{route}/{i}")
            assert r.status_code == 404 and b"SECRET" not in r.content, (route, i)
    ids = ["-1", str(N), "1.0", "+1", " 1", "0x1", "1e1", "\u00b2", "\u0663", "\uff11", "9" * 5000, "%00",
           "..%2Fsecret.jpg", "%2Fetc%2Fpasswd", "%2e%2e%2fsecret.jpg"]
    for route in ("image", "thumb"):
        for id_ in ids:
            r = client.get(f"/{route}/{id_}")
            assert r.status_code == 404 and b"SECRET" not in r.content, (route, id_)
    for url in ("/image/", "/image/../../secret.jpg", f"/image/{secret}", "/secret.jpg"):
        r = client.get(url)
        assert r.status_code == 404 and b"SECRET" not in r.content, url
    # the page lists a refused image among its hits without serving it
    assert 3 in page_ids(client.get("/", params={"q": "a star", "k": N}).text)


def test_serve_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", "--index", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no embeddings here" in err
    assert main(["serve", "--index", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_page_in_headless_chromium(tiny_run, collection, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    emb = collection[0]
    server = subprocess.Popen([PYTHON, "-m", "contrastive", "serve", "--index", str(emb), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        line = server.stdout.readline()
        base = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert base, (line, server.stderr.read() if server.poll() is not None else "")
        url = base.group(0) + "?q=a+large+blue+square&k=8"
        chrome = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        dom = subprocess.run([*chrome, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        assert len(page_ids(dom)) == 8
        assert_brute_force_ranking(tiny_run, emb, "a large blue square", page_ids(dom))
        shot = tmp_path / "page.png"
        subprocess.run([*chrome, f"--screenshot={shot}", "--window-size=1000,700", url], capture_output=True,
                       timeout=120)
        from PIL import Image

        with Image.open(shot) as img:
            assert img.size == (1000, 700) and len(img.convert("L").getcolors()) > 10  # drawn, not blank
    finally:
        server.terminate()
        server.wait(timeout=30)
