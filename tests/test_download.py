"""Weights on first use, against an HTTP server on 127.0.0.1 started in the test process.

Nothing here reaches beyond 127.0.0.1: every entry's sources point at the local server (or at a
port nobody listens on). The server serves a small NAFNet checkpoint made here: plainly, behind a
Google-Drive-style confirmation page (form or cookie), cut off mid-file, as an HTML error page,
as another network's weights; the tests check what lands in the cache byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import tlc
from tlc import archs
from tlc import io as tlc_io
from tlc.cli import main
from tlc.zoo import registry
from tlc.zoo.download import (
    DownloadError,
    cache_dir,
    cached_weights,
    confirmation_url,
    ensure_weights,
    weights_path,
)
from tlc.zoo.registry import ModelEntry

CONFIG = {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}
FAST = {"progress": False, "backoff": 0.0, "timeout": 5.0}  # no waiting between retries in tests


def entry_for(*sources: str, name: str = "dl-test-nafnet", sha256: str | None = None) -> ModelEntry:
    return ModelEntry(name, "NAFNet", CONFIG, "test", "params", (32, 32), None, (), "MIT",
                      "https://example.invalid/page", sources=sources, sha256=sha256)


def saved(model: torch.nn.Module, key: str = "params") -> bytes:
    buffer = io.BytesIO()
    torch.save({key: model.state_dict()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def nafnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = archs.build("NAFNet", **CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def data(nafnet) -> bytes:
    """The checkpoint file the server hands out (a torch.save zip, about 100 kB)."""
    return saved(nafnet)


# --------------------------------------------------------------------------------------------
# The local server


class Server:
    """An HTTP/1.0 server on 127.0.0.1 (ephemeral port): path -> handler, every request recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()  # handlers that stall wait for this
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, dict(self.headers.items())))
                route = server.routes.get(urllib.parse.urlsplit(self.path).path)
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def ranges(self) -> list[str | None]:
        return [headers.get("Range") for _, headers in self.requests]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def home(no_downloads, monkeypatch, tmp_path) -> Path:
    """Downloads on, into an empty cache of this test's own."""
    monkeypatch.delenv("TLC_OFFLINE")
    monkeypatch.setenv("TLC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def send(h: BaseHTTPRequestHandler, body: bytes, content_type: str = "application/octet-stream",
         ranges: bool = True, headers: dict[str, str] | None = None) -> None:
    """``body`` as a file; a ``Range: bytes=N-`` request gets a 206 from N when ``ranges``."""
    wanted = h.headers.get("Range")
    start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted and ranges else 0
    h.send_response(206 if start else 200)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body) - start))
    if start:
        h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body[start:])


def cut(h: BaseHTTPRequestHandler, body: bytes, at: int, announce: bool = True) -> None:
    """Announce ``body`` (when ``announce``), send its first ``at`` bytes, and drop the connection."""
    h.send_response(200)
    h.send_header("Content-Type", "application/octet-stream")
    if announce:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body[:at])
    h.wfile.flush()
    h.connection.shutdown(socket.SHUT_RDWR)


def cache_files(home: Path) -> list[str]:
    """The files in the cache's weights folder."""
    return sorted(p.name for p in (home / "weights").rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# The cache


def test_cache_dir_from_tlc_home_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TLC_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    monkeypatch.setenv("HOME", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TLC_HOME")
    assert cache_dir() == tmp_path / "b" / "tlc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "c" / ".cache" / "tlc"
    entry = entry_for("http://127.0.0.1:1/x.pth")
    assert weights_path(entry) == tmp_path / "c" / ".cache" / "tlc" / "weights" / "dl-test-nafnet.pth"
    assert cached_weights(entry) is None
    assert cached_weights(registry.get("tiny-nafnet")).name == "tiny-nafnet.safetensors"


def test_every_released_entry_has_a_source_and_says_its_licence():
    for entry in registry.REGISTRY:
        if entry.bundled_weights is None:
            assert entry.sources and all(s.startswith("https://") for s in entry.sources), entry.name
            assert entry.sha256 is None or len(entry.sha256) == 64
        assert entry.non_commercial == entry.name.startswith(("restormer", "mprnet"))


# --------------------------------------------------------------------------------------------
# Downloads


def test_plain_file_lands_in_the_cache_once(server, home, data):
    server.routes["/w.pth"] = lambda h: send(h, data)
    entry = entry_for(server.url("/w.pth"))
    notes = []
    path = ensure_weights(entry, log=notes.append, **FAST)
    assert path == home / "weights" / "dl-test-nafnet.pth"
    assert path.read_bytes() == data
    assert cache_files(home) == ["dl-test-nafnet.pth"]
    assert any(server.url("/w.pth") in n for n in notes) and any(str(path) in n for n in notes)
    assert ensure_weights(entry, **FAST) == path and len(server.requests) == 1  # cached: no request


def test_drive_confirmation_form_is_followed(server, home, data):
    page = f"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
    <p>Google Drive can't scan this file for viruses.</p>
    <form id="download-form" action="{server.url('/download')}" method="get">
    <input type="submit" id="uc-download-link" class="goog-inline-block jfk-button" value="Download anyway"/>
    <input type="hidden" name="id" value="FILE_ID"><input type="hidden" name="export" value="download">
    <input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-42"></form></body></html>"""
    server.routes["/uc"] = lambda h: send(h, page.encode(), "text/html; charset=utf-8")

    def download(h):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(h.path).query))
        if query == {"id": "FILE_ID", "export": "download", "confirm": "t", "uuid": "u-42"}:
            send(h, data)
        else:
            h.send_error(403)

    server.routes["/download"] = download
    path = ensure_weights(entry_for(server.url("/uc?export=download&id=FILE_ID")), **FAST)
    assert path.read_bytes() == data
    assert [urllib.parse.urlsplit(p).path for p, _ in server.requests] == ["/uc", "/download"]


def test_drive_download_warning_cookie_is_followed(server, home, data):
    def uc(h):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(h.path).query))
        if query.get("confirm") == "TOKEN7" and "download_warning_13=TOKEN7" in h.headers.get("Cookie", ""):
            send(h, data)
        else:
            send(h, b"<html><head><title>Google Drive - Virus scan warning</title></head><body>big file</body></html>",
                 "text/html", headers={"Set-Cookie": "download_warning_13=TOKEN7; Path=/"})

    server.routes["/uc"] = uc
    path = ensure_weights(entry_for(server.url("/uc?export=download&id=X")), **FAST)
    assert path.read_bytes() == data and len(server.requests) == 2
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(server.requests[1][0]).query)) == {
        "export": "download", "id": "X", "confirm": "TOKEN7"}


def test_confirmation_url_of_other_pages():
    base = "https://drive.google.com/uc?export=download&id=ABC"
    link = '<html><a id="uc-download-link" href="/uc?export=download&amp;confirm=Zx_1&amp;id=ABC">Download</a></html>'
    assert confirmation_url(link, base) == "https://drive.google.com/uc?export=download&confirm=Zx_1&id=ABC"
    form = ('<form action="https://drive.usercontent.google.com/download"><input type="hidden" name="id" value="ABC">'
            '<input type="hidden" name="confirm" value="t"></form>')
    assert confirmation_url(form, base) == "https://drive.usercontent.google.com/download?id=ABC&confirm=t"
    assert confirmation_url("<html><title>Sign in</title><form action='/login'><input name='user'></form></html>",
                            base) is None


def test_connection_cut_mid_file_resumes_with_a_range_request(server, home, data):
    calls = []

    def route(h):
        calls.append(1)
        if len(calls) == 1:
            cut(h, data, len(data) // 3)
        else:
            send(h, data)

    server.routes["/w.pth"] = route
    notes = []
    path = ensure_weights(entry_for(server.url("/w.pth")), log=notes.append, **FAST)
    assert server.ranges() == [None, f"bytes={len(data) // 3}-"]
    assert path.read_bytes() == data
    assert cache_files(home) == ["dl-test-nafnet.pth"]
    assert any("retrying" in n and "resuming" in n for n in notes)


def test_server_ignoring_range_sends_it_all_again(server, home, data):
    calls = []

    def route(h):
        calls.append(1)
        if len(calls) == 1:
            cut(h, data, len(data) // 2)
        else:
            send(h, data, ranges=False)  # 200 with the whole file, as if Range were not there

    server.routes["/w.pth"] = route
    path = ensure_weights(entry_for(server.url("/w.pth")), **FAST)
    assert server.ranges() == [None, f"bytes={len(data) // 2}-"]
    assert path.read_bytes() == data


def test_part_file_of_an_earlier_run_is_resumed(server, home, data):
    server.routes["/w.pth"] = lambda h: send(h, data)
    entry = entry_for(server.url("/w.pth"))
    part = weights_path(entry).with_name("dl-test-nafnet.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    assert ensure_weights(entry, **FAST).read_bytes() == data
    assert server.ranges() == ["bytes=1000-"] and not part.exists()


def test_part_file_from_elsewhere_is_refused_then_fetched_whole(server, home, data):
    server.routes["/w.pth"] = lambda h: send(h, data)
    entry = entry_for(server.url("/w.pth"))
    part = weights_path(entry).with_name("dl-test-nafnet.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * 700)  # not this file's first bytes: the resumed file is corrupt
    assert ensure_weights(entry, **FAST).read_bytes() == data
    assert server.ranges() == ["bytes=700-", None]


@pytest.mark.parametrize("leftover", ["whole", "too long"])
def test_part_file_the_server_cannot_extend(server, home, data, leftover):
    """416 Range Not Satisfiable: a complete .part is kept as it is; a longer one is fetched anew."""

    def route(h):
        start = int(h.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        if start >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.end_headers()
        else:
            send(h, data)

    server.routes["/w.pth"] = route
    entry = entry_for(server.url("/w.pth"))
    part = weights_path(entry).with_name("dl-test-nafnet.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data if leftover == "whole" else data + b"\x00" * 10)
    assert ensure_weights(entry, **FAST).read_bytes() == data
    assert server.ranges() == ([f"bytes={len(data)}-"] if leftover == "whole" else [f"bytes={len(data) + 10}-", None])


def test_a_second_process_waits_for_the_first_download(server, home, data):
    from filelock import FileLock

    entry = entry_for(server.url("/w.pth"))
    target = weights_path(entry)
    target.parent.mkdir(parents=True)
    notes, result = [], []
    (home / "locks").mkdir(parents=True)
    with FileLock(str(home / "locks" / "dl-test-nafnet.lock")):  # "another process" is downloading
        waiter = threading.Thread(target=lambda: result.append(ensure_weights(entry, log=notes.append, **FAST)))
        waiter.start()
        for _ in range(200):
            if notes:
                break
            threading.Event().wait(0.01)
        assert notes and "waiting for another process" in notes[0] and not result
        target.write_bytes(data)  # ... and finishes
    waiter.join(10)
    assert result == [target] and server.requests == []


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream"])
def test_html_error_page_is_refused(server, home, content_type):
    page = b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users</body>"
    server.routes["/w.pth"] = lambda h: send(h, page, content_type)
    with pytest.raises(DownloadError, match="web page.*Quota exceeded") as info:
        ensure_weights(entry_for(server.url("/w.pth")), **FAST)
    assert "\n" not in str(info.value) and str(weights_path(entry_for())) in str(info.value)
    assert cache_files(home) == []


def test_weights_of_another_network_are_refused(server, home):
    torch.manual_seed(1)
    other = saved(archs.build("UNet", width=4, depth=2, blocks=1, norm="none", attention="none"))
    wider = saved(archs.build("NAFNet", **{**CONFIG, "width": 12}))
    server.routes["/unet.pth"] = lambda h: send(h, other)
    server.routes["/wider.pth"] = lambda h: send(h, wider)
    for path in ("/unet.pth", "/wider.pth"):
        with pytest.raises(DownloadError, match="does not hold dl-test-nafnet's NAFNet weights") as info:
            ensure_weights(entry_for(server.url(path)), **FAST)
        assert "\n" not in str(info.value)
        assert cache_files(home) == []


def test_pinned_sha256_is_checked(server, home, data):
    server.routes["/w.pth"] = lambda h: send(h, data)
    digest = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(data + b"x").hexdigest()
    with pytest.raises(DownloadError, match=f"SHA-256 is {digest}, not the {wrong}"):
        ensure_weights(entry_for(server.url("/w.pth"), sha256=wrong), **FAST)
    assert cache_files(home) == []
    assert ensure_weights(entry_for(server.url("/w.pth"), sha256=digest.upper()), **FAST).read_bytes() == data


def test_truncated_file_without_a_length_is_refused(server, home, data):
    server.routes["/w.pth"] = lambda h: cut(h, data, len(data) // 2, announce=False)
    with pytest.raises(DownloadError, match="truncated or corrupt"):
        ensure_weights(entry_for(server.url("/w.pth")), **FAST)
    assert cache_files(home) == []


def test_next_source_after_a_failing_one(server, home, data):
    server.routes["/good.pth"] = lambda h: send(h, data)
    notes = []
    entry = entry_for(server.url("/missing.pth"), server.url("/good.pth"))
    assert ensure_weights(entry, log=notes.append, **FAST).read_bytes() == data
    assert any("HTTP 404" in n and "trying the next address" in n for n in notes)


def test_stalled_server_times_out_and_retries(server, home):
    server.routes["/w.pth"] = lambda h: server.release.wait(30)
    with pytest.raises(DownloadError, match=r"no answer within 0.3 s"):
        ensure_weights(entry_for(server.url("/w.pth")), **{**FAST, "timeout": 0.3, "retries": 1})
    assert len(server.requests) == 2  # the first try and one retry
    assert cache_files(home) == []


def test_no_server_names_the_address_and_the_cache_path(home):
    url = f"http://127.0.0.1:{free_port()}/NAFNet-test.pth"
    entry = entry_for(url)
    with pytest.raises(DownloadError) as info:
        ensure_weights(entry, **FAST)
    message = str(info.value)
    assert url in message and str(home / "weights" / "dl-test-nafnet.pth") in message and "weights=" in message
    assert "\n" not in message and "--weights" not in message  # Python callers; the command line names its flag
    assert cache_files(home) == []


def test_offline_says_where_to_put_the_file_and_asks_nothing(server, home, monkeypatch):
    entry = entry_for(server.url("/w.pth"))
    with pytest.raises(DownloadError, match="download=False") as info:
        ensure_weights(entry, download=False)
    assert server.url("/w.pth") in str(info.value) and str(weights_path(entry)) in str(info.value)
    monkeypatch.setenv("TLC_OFFLINE", "1")
    with pytest.raises(DownloadError, match="TLC_OFFLINE"):
        ensure_weights(entry)
    assert server.requests == []


# --------------------------------------------------------------------------------------------
# load_model and the command line


@pytest.fixture
def listed(monkeypatch, server):
    """Two test entries in the registry, both served by the local server."""
    entries = (entry_for(server.url("/w.pth")), entry_for(server.url("/w.pth"), name="dl-test-nafnet-2"))
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, *entries))
    return entries


def test_load_model_downloads_on_first_use(server, home, listed, nafnet, data):
    server.routes["/w.pth"] = lambda h: send(h, data)
    model = tlc.load_model("dl-test-nafnet")
    assert (home / "weights" / "dl-test-nafnet.pth").read_bytes() == data
    loaded, expected = model.state_dict(), nafnet.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    tlc.load_model("dl-test-nafnet")
    assert len(server.requests) == 1  # the second time from the cache
    with pytest.raises(DownloadError, match="dl-test-nafnet-2.pth"):
        tlc.load_model("dl-test-nafnet-2", download=False)
    assert len(server.requests) == 1


def test_cli_download_inspect_list_and_restore(server, home, listed, data, tmp_path, capsys):
    server.routes["/w.pth"] = lambda h: send(h, data)
    assert main(["download", "dl-test-nafnet"]) == 0
    out = capsys.readouterr().out
    path = home / "weights" / "dl-test-nafnet.pth"
    assert f"dl-test-nafnet: {path} ({len(data) / 1024:.1f} KiB)" in out
    assert main(["download", "dl-test-nafnet", "tiny-nafnet"]) == 0
    out = capsys.readouterr().out
    assert f"dl-test-nafnet: already in the cache: {path}" in out and "tiny-nafnet: bundled with tlc" in out
    assert len(server.requests) == 1
    assert main(["inspect", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    state = {line.split(":")[0]: line.rsplit("[", 1)[-1] for line in lines if line.endswith("]")}
    assert state["dl-test-nafnet"] == "cached]" and state["dl-test-nafnet-2"] == "not downloaded]"
    assert state["tiny-nafnet"] == "bundled]" and state["nafnet-gopro-width64"] == "not downloaded]"
    assert any(str(home / "weights") in line for line in lines)
    # restore --model NAME gets the second entry's weights on first use.
    tlc_io.write_image(tmp_path / "in" / "a.png", np.random.default_rng(0).random((24, 40, 3), dtype=np.float32))
    assert main(["restore", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "out"), "--model", "dl-test-nafnet-2",
                 "--mode", "full"]) == 0
    assert (home / "weights" / "dl-test-nafnet-2.pth").read_bytes() == data
    assert (tmp_path / "out" / "a.png").is_file() and len(server.requests) == 2


def test_cli_download_failures(home, monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}/w.pth"
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, entry_for(url)))
    assert main(["download", "dl-test-nafnet"]) == 1
    err = capsys.readouterr().err
    assert "tlc: error: dl-test-nafnet needs its weights file" in err and url in err
    assert main(["download", "dl-test-nafnt"]) == 2
    assert "did you mean dl-test-nafnet" in capsys.readouterr().err
    monkeypatch.setenv("TLC_OFFLINE", "1")
    assert main(["download", "dl-test-nafnet"]) == 1
    assert "TLC_OFFLINE is set" in capsys.readouterr().err
    assert cache_files(home) == []



def test_cli_download_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["download", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "tlc download nafnet-gopro-width64" in out and "TLC_HOME" in out
