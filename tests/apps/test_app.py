"""The search app without a browser: URL fetch safety, upload caps, which files are served, the searches.

Network: only a loopback HTTP server started here is ever contacted (with allow_private=True);
every other address is refused by the checks before any connection is made.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from tools.app import main as app_main

from conftest import CONFIGS, make_class_folder
from simsearch.apps import url_fetch
from simsearch.apps.app import AppSettings, SearchService, build_app, check_image_file, md_escape
from simsearch.apps.url_fetch import UrlFetchError, check_address, check_url, fetch_url
from simsearch.retrieval.store import add_to_index, build_index_dir


def build_tiny_index(root: Path) -> Path:
    """An untrained tiny OpenCLIP checkpoint (train.epochs=0) and a Flat index of 3 classes x 3 images."""
    from tools.train import main as train_main

    train = make_class_folder(root / "train", n_classes=4, per_class=2, seed=0)
    assert train_main(["--config", str(CONFIGS / "tiny_test.yaml"), f"data.train_dir={train}",
                       f"train.output_dir={root / 'runs'}", "train.epochs=0", "data.val_fraction=0"]) == 0
    catalog = make_class_folder(root / "catalog", n_classes=3, per_class=3, seed=5)
    build_index_dir(root / "runs" / "tiny_test" / "best", catalog, root / "idx")
    return root / "idx"


# --------------------------------------------------------------------------- a loopback server


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /img (the body), /big (no Content-Length, 64 KiB), /sized (Content-Length over the cap),
    /slow (waits before the body), /r (redirect to /img), /loop, /to-ftp, /to-private (redirects)."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.paths.append(self.path)
        srv.hosts.append(self.headers["Host"])
        redirects = {"/r": "/img", "/loop": "/loop", "/to-ftp": "ftp://127.0.0.1/x.jpg",
                     "/to-private": "http://10.1.2.3/x.jpg"}
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/img":
            self._send(srv.body)
        elif self.path == "/sized":
            self._send(b"x" * 5000)
        elif self.path == "/big":  # HTTP/1.0 style: no length, the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"y" * 1024)
            except OSError:  # the client stopped reading, as it should
                pass
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            srv.release.wait(10)
            self.wfile.write(b"late")
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads, srv.block_on_close = True, False
    srv.paths, srv.hosts, srv.body, srv.release = [], [], b"hello image", threading.Event()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


# --------------------------------------------------------------------------- URL checks (no network)


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "javascript:alert(1)",
                                 "gopher://example.com/", "example.com/a.jpg", "data:image/png;base64,AAAA"])
def test_only_http_and_https_urls_are_accepted(url):
    with pytest.raises(UrlFetchError, match="only http and https"):
        check_url(url)


def test_a_url_needs_a_host_and_a_valid_port():
    with pytest.raises(UrlFetchError, match="has no host"):
        check_url("http:///a.jpg")
    with pytest.raises(UrlFetchError, match="bad URL"):
        check_url("http://93.184.216.34:99999/a.jpg")


@pytest.mark.parametrize("ip, kind", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6 is judged by its IPv4 address
    ("10.1.2.3", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", "non-global"),  # carrier-grade NAT: neither private nor public
])
def test_non_public_addresses_are_refused(ip, kind):
    with pytest.raises(UrlFetchError, match=f"it is a {kind} address"):
        check_address(ip)
    assert str(check_address(ip, allow_private=True)) in (ip, ip.removeprefix("::ffff:"))


def test_a_public_ip_literal_passes_the_check():
    assert str(check_address("93.184.216.34")) == "93.184.216.34"
    assert str(check_address("2606:4700:4700::1111")) == "2606:4700:4700::1111"
    seen = []

    def resolve(host: str, port: int) -> list[str]:  # no DNS, no request: the literal is its own address
        seen.append((host, port))
        return [host]

    assert check_url("https://93.184.216.34/cat.jpg", resolve=resolve) == ("https", "93.184.216.34", 443,
                                                                           check_address("93.184.216.34"))
    assert seen == [("93.184.216.34", 443)]


def test_a_host_with_any_private_address_is_refused():
    with pytest.raises(UrlFetchError, match="10.0.0.7: it is a private address"):
        check_url("http://shop.test/a.jpg", resolve=lambda h, p: ["93.184.216.34", "10.0.0.7"])


# --------------------------------------------------------------------------- fetching from loopback


def test_loopback_is_refused_without_the_flag_and_nothing_is_sent(server):
    with pytest.raises(UrlFetchError, match="loopback address .*--allow-private-urls"):
        fetch_url(f"{server.url}/img")
    assert server.paths == []


def test_fetch_returns_the_body_and_follows_a_redirect(server):
    assert fetch_url(f"{server.url}/img", allow_private=True) == b"hello image"
    assert fetch_url(f"{server.url}/r", allow_private=True) == b"hello image"
    assert server.paths == ["/img", "/r", "/img"]


def test_the_connection_goes_to_the_address_that_was_checked(server, monkeypatch):
    """DNS rebinding: a second lookup of the name would give another address; it must not be asked."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])

    def rebinding(host, port, *args, **kwargs):
        if host == "shop.test":  # then 127.0.0.2, where nothing listens: a re-resolving client would fail
            return real(next(answers, "127.0.0.2"), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = server.server_address[1]
    assert fetch_url(f"http://shop.test:{port}/img", allow_private=True, timeout=5) == b"hello image"
    assert server.hosts == [f"shop.test:{port}"]  # the name still goes in the Host header


def test_size_cap_from_the_header_and_while_streaming(server):
    with pytest.raises(UrlFetchError, match="5000 bytes, over the 1000-byte cap"):
        fetch_url(f"{server.url}/sized", max_bytes=1000, allow_private=True)
    with pytest.raises(UrlFetchError, match="larger than the 10000-byte cap; stopped reading"):
        fetch_url(f"{server.url}/big", max_bytes=10_000, allow_private=True)
    assert len(fetch_url(f"{server.url}/big", max_bytes=2**20, allow_private=True)) == 64 * 1024


def test_timeout_is_respected(server):
    with pytest.raises(UrlFetchError, match="took longer than 0.3 s"):
        fetch_url(f"{server.url}/slow", timeout=0.3, allow_private=True)


def test_redirects_are_checked_again(server, monkeypatch):
    with pytest.raises(UrlFetchError, match="only http and https"):
        fetch_url(f"{server.url}/to-ftp", allow_private=True)
    with pytest.raises(UrlFetchError, match="more than 3 redirects"):
        fetch_url(f"{server.url}/loop", allow_private=True)
    assert server.paths.count("/loop") == 4
    # Allow exactly this server's address; the redirect to 10.1.2.3 must then be refused before connecting.
    real = url_fetch.check_address
    monkeypatch.setattr(url_fetch, "check_address",
                        lambda ip, allow_private=False: real(ip, allow_private=str(ip) == "127.0.0.1"))
    with pytest.raises(UrlFetchError, match="10.1.2.3: it is a private address"):
        fetch_url(f"{server.url}/to-private")


# --------------------------------------------------------------------------- image checks


def test_image_check_caps_bytes_and_pixels_and_rejects_non_images(tmp_path, monkeypatch):
    png = tmp_path / "a.png"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(png)
    size = png.stat().st_size
    check_image_file(png, max_bytes=size, max_pixels=200)  # exactly at both caps: accepted
    with pytest.raises(ValueError, match="over the .* MB upload cap"):
        check_image_file(png, max_bytes=size - 1, max_pixels=200)
    with pytest.raises(ValueError, match="20x10 = 200 pixels, over the cap of 199"):
        check_image_file(png, max_bytes=size, max_pixels=199)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own bomb limit: a warning made an error
    with pytest.raises(ValueError, match="decompression bomb"):
        check_image_file(png, max_bytes=size, max_pixels=10**9)
    text = tmp_path / "b.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        check_image_file(text, max_bytes=10**6, max_pixels=10**9)


def test_markdown_escape_shows_names_literally():
    assert md_escape("a_b*c|d [x](y).jpg") == r"a\_b\*c\|d \[x\]\(y\).jpg"
    assert md_escape("plain name-1.jpg") == "plain name-1.jpg"


def test_settings_are_validated():
    with pytest.raises(ValueError, match="--top-k must be > 0"):
        AppSettings(top_k=0)
    with pytest.raises(ValueError, match="--max-upload-mb must be > 0"):
        AppSettings(max_upload_mb=-1)
    assert AppSettings(max_upload_mb=0.5).max_bytes == 2**19


# --------------------------------------------------------------------------- the service on a tiny index


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    return build_tiny_index(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def service(index) -> SearchService:
    return SearchService(index, AppSettings(top_k=4))


def test_only_files_inside_the_images_folder_are_served(service, index, tmp_path):
    inside = service.images_dir / "class_00" / "img_00.jpg"
    assert service.served_path(inside) == inside
    traversal = service.images_dir / ".." / "idx" / "ids.json"
    for outside in (index / "manifest.json", traversal, Path("/etc/hostname")):
        with pytest.raises(ValueError, match="outside the index's images folder"):
            service.served_path(outside)
    images_link = service.images_dir / "escape.jpg"  # a link inside that points outside: judged by its target
    shutil.copy(inside, tmp_path / "copy.jpg")
    images_link.symlink_to(tmp_path / "copy.jpg")
    try:
        with pytest.raises(ValueError, match="outside"):
            service.served_path(images_link)
    finally:
        images_link.unlink()
    with pytest.raises(FileNotFoundError, match="no such file"):
        service.served_path(service.images_dir / "class_00" / "missing.jpg")


def test_an_uploaded_catalogue_image_ranks_itself_first(service):
    query = service.images_dir / "class_02" / "img_01.jpg"
    items, status = service.search_upload(str(query))
    assert len(items) == 4
    assert items[0] == (str(query), "1. class_02/img_01.jpg · 1.000")
    assert all(Path(p).is_relative_to(service.images_dir) for p, _ in items)
    assert [c.split(" ", 1)[0] for _, c in items] == ["1.", "2.", "3.", "4."]
    lines = status.splitlines()
    assert lines[0] == "Top 4 of 9 images for the uploaded image."
    assert lines[4] == r"| 1 | 1.000 | class\_02/img\_01.jpg |" and len(lines) == 8  # a table of the 4


def test_uploads_over_the_cap_are_refused_with_a_message(index, service):
    query = service.images_dir / "class_00" / "img_00.jpg"
    small = SearchService(service.index, AppSettings(max_upload_mb=query.stat().st_size / 2**21))
    items, status = small.search_upload(str(query))
    assert items == [] and status.startswith(r"**Error:** img\_00.jpg: the image is") and "upload cap" in status
    assert service.search_upload(None) == ([], "Upload an image first.")


def test_url_search_from_loopback_only_with_the_flag(service, server):
    query = service.images_dir / "class_01" / "img_02.jpg"
    server.body = query.read_bytes()
    items, status = service.search_url(f"{server.url}/img")
    assert items == [] and "loopback address" in status and server.paths == []
    allowed = SearchService(service.index, AppSettings(top_k=2, allow_private_urls=True))
    items, status = allowed.search_url(f" {server.url}/img ")
    assert [c for _, c in items][0] == "1. class_01/img_02.jpg · 1.000" and len(items) == 2
    assert f"for the image at {server.url}/img" in status
    server.body = b"not an image"
    items, status = allowed.search_url(f"{server.url}/img")
    assert items == [] and "not a readable image" in status


def test_text_search_on_a_clip_index_and_the_box_is_shown(service):
    items, status = service.search_text("red dress")
    assert service.text_search_error is None and len(items) == 4
    assert status.startswith('Top 4 of 9 images for "red dress"')
    assert service.search_text("  ") == ([], "Type a description first.")
    ids = {getattr(b, "elem_id", None) for b in build_app(service).blocks.values()}
    assert {"query-image", "query-url", "query-text", "results", "status"} <= ids


def test_no_text_box_without_a_text_tower(index, tmp_path):
    idx = Path(shutil.copytree(index, tmp_path / "idx"))
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["config"]["model"]["backbone"] = "timm:resnet18"
    (idx / "manifest.json").write_text(json.dumps(manifest))
    svc = SearchService(idx)
    assert "text search needs a CLIP model" in svc.text_search_error
    items, status = svc.search_text("red dress")
    assert items == [] and "timm:resnet18" in status
    ids = {getattr(b, "elem_id", None) for b in build_app(svc).blocks.values()}
    assert "query-text" not in ids and "text-search-off" in ids


def test_results_outside_the_images_folder_are_hidden(index, tmp_path):
    idx = Path(shutil.copytree(index, tmp_path / "idx"))
    extra = make_class_folder(tmp_path / "elsewhere", n_classes=1, per_class=1, seed=3) / "class_00" / "img_00.jpg"
    add_to_index(idx, extra)  # stored under its absolute path, outside images_dir
    svc = SearchService(idx, AppSettings(top_k=3))
    items, status = svc.search_upload(str(extra))
    assert len(items) == 2 and all(Path(p).is_relative_to(svc.images_dir) for p, _ in items)
    assert items[0][1].startswith("2. ") and "1 result(s) outside the images folder" in status


def test_analytics_are_off_before_gradio_is_imported():
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_ANALYTICS_ENABLED"}
    # simsearch.apps.app imports gradio lazily, always after simsearch/__init__.py has run
    code = "import simsearch, gradio.analytics as a; print(a.analytics_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tool_reports_bad_input_without_starting(tmp_path, capsys):
    assert app_main(["--index", str(tmp_path / "nope")]) == 2
    assert "nope is not an index folder" in capsys.readouterr().err
    assert app_main(["--index", str(tmp_path), "--top-k", "0"]) == 2
    assert "--top-k must be > 0" in capsys.readouterr().err
