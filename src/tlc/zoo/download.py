"""Released weights on first use: the cache, downloading with resume, and what a download must be.

    path = ensure_weights(registry.get("nafnet-gopro-width64"))   # the cached file, downloaded once

The cache is ``$TLC_HOME``, else ``$XDG_CACHE_HOME/tlc``, else ``~/.cache/tlc``; an entry's weights
are ``<cache>/weights/<entry name>.pth`` (:func:`weights_path`), where a user may also put the file
by hand. ``TLC_OFFLINE=1`` turns downloading off everywhere.

An entry's ``sources`` are tried in order. Google Drive's "can't scan this file for viruses" page
is followed (its form, its ``download_warning`` cookie or its link). Bytes go to ``<file>.part``;
a transfer that stops early is resumed with an HTTP Range request (a server that answers 200
instead of 206 sends the file again from the start), every socket operation has a timeout, and
lost connections are retried a few times with exponential backoff. An interrupted run (Ctrl-C)
keeps the ``.part`` and the next one resumes it.

A finished download is accepted only if it is not a web page, matches the entry's pinned SHA-256
(where there is one), loads safely (:func:`read_state_dict`: ``weights_only`` or safetensors) and
has exactly the keys and shapes of the entry's network; it is then renamed into place atomically.
Anything else is refused with one line saying why, and nothing of it stays in the cache. A lock
file per entry (``<cache>/locks/``) makes concurrent processes (torchrun ranks) wait for one
download.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from html.parser import HTMLParser
from http.cookiejar import Cookie, CookieJar
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from .._util import Hint, hinted, one_line
from . import registry
from .checkpoints import CheckpointError, model_shapes, read_state_dict, shape_differences, state_shapes

USER_AGENT = "tlc-weights/1 (Python urllib)"
CHUNK = 1 << 16  # bytes per read
PAGE_LIMIT = 1 << 20  # a confirmation page is a few kB; more than this is not one
PAGES = 3  # confirmation pages followed per request

Log = Callable[[str], None]


class DownloadError(CheckpointError):
    """Weights are not in the cache and could not be downloaded (or were refused); the message
    names the addresses tried and the exact path where the file can be put by hand."""


class _SourceFailed(Exception):
    """This address gave no usable file (the message says why): the next one is tried."""


class _Interrupted(Exception):
    """The transfer stopped early (the message says why): a retry resumes it."""


# --------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """tlc's cache folder: ``$TLC_HOME``, else ``$XDG_CACHE_HOME/tlc``, else ``~/.cache/tlc``."""
    if os.environ.get("TLC_HOME"):
        return Path(os.environ["TLC_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "tlc"
    return Path.home() / ".cache" / "tlc"


def weights_path(entry: registry.ModelEntry) -> Path:
    """Where the cache keeps ``entry``'s weights: ``<cache>/weights/<entry name>.pth`` (``.safetensors``
    when the first source is one). The file need not exist."""
    first = urllib.parse.urlparse(entry.sources[0]).path if entry.sources else ""
    suffix = ".safetensors" if first.lower().endswith(".safetensors") else ".pth"
    return cache_dir() / "weights" / f"{entry.name}{suffix}"


def cached_weights(entry: registry.ModelEntry) -> Path | None:
    """``entry``'s weights file if it is at hand (bundled with tlc, or in the cache), else None."""
    if entry.bundled_weights is not None:
        return entry.bundled_weights
    path = weights_path(entry)
    return path if path.is_file() else None


def offline() -> bool:
    """True when ``TLC_OFFLINE`` is set (to anything but empty, 0, false or no)."""
    return os.environ.get("TLC_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------------
# Getting an entry's weights


def ensure_weights(
    entry: registry.ModelEntry,
    *,
    download: bool = True,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    log: Log | None = None,
) -> Path:
    """The path of ``entry``'s weights: bundled, cached, or downloaded into the cache now.

    Args:
        entry: a registry entry.
        download: fetch the file when it is not cached (``TLC_OFFLINE=1`` turns this off too).
        progress: show a progress bar with the size on stderr (hidden when stderr is not a terminal).
        timeout: seconds any one connect or read may wait.
        retries: further attempts per address after a lost connection or a timeout (each resumes).
        backoff: seconds before the first retry, doubling with each one.
        log: where one-line notes go (default: stderr).

    Raises:
        DownloadError: not cached and downloading is off, or every address failed or was refused;
            the message names the addresses and the path where the file can be put by hand.
    """
    found = cached_weights(entry)
    if found is not None:
        return found
    target = weights_path(entry)
    if not download or offline():
        why = "TLC_OFFLINE is set" if offline() else "download=False"
        raise _by_hand(f"{entry.name} needs its weights file, which is not in the cache, and downloads are "
                       f"off ({why}): ", entry, target)
    if not entry.sources:
        raise _by_hand(f"{entry.name} needs its weights file and the registry has no address to download it "
                       "from: ", entry, target)
    say = log or _stderr
    lock_path = cache_dir() / "locks" / f"{entry.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _by_hand(f"cannot write tlc's cache at {cache_dir()} ({err.strerror or err}); set TLC_HOME to a "
                       "writable folder, or ", entry, target) from None
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"waiting for another process downloading {entry.name} ...")
        lock.acquire()
    try:
        if target.is_file():  # the other process finished it
            return target
        failures = []
        for number, url in enumerate(entry.sources, 1):
            try:
                _download(entry, url, target, progress=progress, timeout=timeout, retries=retries,
                          backoff=backoff, log=say)
                return target
            except (_SourceFailed, _Interrupted, OSError, http.client.HTTPException, ValueError) as err:
                failures.append(f"{url}: {_reason(err, timeout)}")
                if isinstance(err, urllib.error.HTTPError):
                    err.close()  # it holds the error page's connection
                if number < len(entry.sources):
                    say(f"tlc: warning: {entry.name}: {failures[-1]}; trying the next address")
    finally:
        lock.release()
    raise _by_hand(f"{entry.name} needs its weights file and no download worked ({'; '.join(failures)}): ",
                   entry, target, tried=True)


def _by_hand(problem: str, entry: registry.ModelEntry, target: Path, tried: bool = False) -> DownloadError:
    """The error: ``problem``, then what a user can do instead: the addresses (those not named
    already), the exact cache path, or a weights file of their own."""
    addresses = [a for a in dict.fromkeys((*entry.sources, entry.url)) if not (tried and a in entry.sources)]
    where = f"download it from {' or '.join(addresses)}" if addresses else "download it yourself"
    licence = f" Licence: {entry.licence}." if entry.non_commercial else ""
    return hinted(DownloadError, Hint("load_model", "weights='path/to/file.pth'",
                                      f"{problem}{where} and put it at {target}, or pass ", f".{licence}"))


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def _download(
    entry: registry.ModelEntry, url: str, target: Path, *, progress: bool, timeout: float, retries: int,
    backoff: float, log: Log,
) -> None:
    """Download ``url`` into ``target`` through ``<target>.part``, checked (:func:`_accept`) first."""
    part = target.with_name(target.name + ".part")
    resumed = part.exists()
    log(f"downloading {entry.name} from {url}" + (f" (resuming {size_text(part.stat().st_size)})" if resumed else ""))
    try:
        try:
            _fetch(url, part, timeout=timeout, retries=retries, backoff=backoff, progress=progress,
                   label=target.name, log=log)
            _accept(entry, part)
        except _SourceFailed:
            if not resumed:
                raise
            # What an earlier run left may have come from elsewhere: once more, from the start.
            part.unlink(missing_ok=True)
            _fetch(url, part, timeout=timeout, retries=retries, backoff=backoff, progress=progress,
                   label=target.name, log=log)
            _accept(entry, part)
    except KeyboardInterrupt:
        raise  # the .part stays: the next run resumes it
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    log(f"saved {target} ({size_text(target.stat().st_size)})")


# --------------------------------------------------------------------------------------------
# What a download must be


def _accept(entry: registry.ModelEntry, part: Path) -> None:
    """Raise _SourceFailed unless ``part`` holds ``entry``'s weights (see the module doc)."""
    size = part.stat().st_size
    if size == 0:
        raise _SourceFailed("the server sent an empty file")
    with part.open("rb") as f:
        head = f.read(PAGE_LIMIT)
    if head.lstrip()[:1] == b"<":
        raise _SourceFailed(f"the server sent a web page{_title(head)}, not the weights file")
    if entry.sha256 is not None:
        digest = _sha256(part)
        if digest != entry.sha256.lower():
            raise _SourceFailed(f"its SHA-256 is {digest}, not the {entry.sha256} the registry pins")
    try:
        state_dict = read_state_dict(part, prefer=(entry.checkpoint_key,))
    except CheckpointError as err:
        raise _SourceFailed(one_line(err).replace(str(part), "the file")) from None
    problems = shape_differences(state_shapes(state_dict), model_shapes(entry.arch, entry.config))
    if problems:
        found = "; ".join(" ".join(line.split()) for line in problems.splitlines())
        raise _SourceFailed(f"it does not hold {entry.name}'s {entry.arch} weights ({found})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Transfers


def _fetch(
    url: str, part: Path, *, timeout: float, retries: int, backoff: float, progress: bool, label: str, log: Log
) -> None:
    """``url``'s bytes into ``part``, resuming what is there; retries transient failures."""
    jar = CookieJar()  # Google Drive's download_warning cookie goes back with the confirmation
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    for attempt in itertools.count():
        try:
            _transfer(opener, jar, url, part, timeout=timeout, progress=progress, label=label)
            return
        except Exception as err:
            if attempt >= retries or not _transient(err):
                raise
            wait = backoff * 2**attempt
            done = part.stat().st_size if part.exists() else 0
            log(f"{label}: {_reason(err, timeout)}; retrying in {wait:g} s"
                + (f", resuming at {size_text(done)}" if done else ""))
            time.sleep(wait)


def _transfer(
    opener: urllib.request.OpenerDirector, jar: CookieJar, url: str, part: Path, *, timeout: float,
    progress: bool, label: str,
) -> None:
    """One request: append the missing bytes to ``part`` (or write it anew if the server sends all)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(opener, jar, url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        total = _range_total(err.headers.get("Content-Range", ""))
        err.close()
        if total == offset:
            return  # an earlier run had every byte already
        part.unlink(missing_ok=True)
        raise _Interrupted("the server cannot resume this file; starting again") from None
    with response:
        start, total = _span(response)
        if start not in (0, offset):
            part.unlink(missing_ok=True)
            raise _Interrupted(f"the server sent bytes from {start}, not {offset}; starting again")
        with part.open("ab" if start else "wb") as f, tqdm(
            total=total, initial=start, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
            disable=None if progress else True, file=sys.stderr, dynamic_ncols=True,
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"the connection closed after {size_text(size)} of {size_text(total)}")
    if total is not None and size > total:
        raise _SourceFailed(f"the server sent {size} bytes, more than the {total} it announced")


def _open(
    opener: urllib.request.OpenerDirector, jar: CookieJar, url: str, offset: int, timeout: float
) -> http.client.HTTPResponse:
    """The response carrying the file, past Google Drive's confirmation pages."""
    for _ in range(PAGES + 1):
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
        if response.headers.get_content_type() != "text/html":
            return response
        with response:
            page = response.read(PAGE_LIMIT)
        next_url = confirmation_url(page.decode("utf-8", "replace"), response.geturl(), jar)
        if next_url is None:
            raise _SourceFailed(f"the server sent a web page{_title(page)}, not the weights file")
        url = next_url
    raise _SourceFailed(f"more than {PAGES} confirmation pages in a row")


def _span(response: http.client.HTTPResponse) -> tuple[int, int | None]:
    """(offset of the first byte sent, size of the whole file or None if not said)."""
    length = response.headers.get("Content-Length")
    sent = int(length) if length and length.isdigit() else None
    if response.status != 206:
        return 0, sent
    content_range = response.headers.get("Content-Range", "")
    try:
        first = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        raise _SourceFailed(f"the server sent a partial answer without a usable Content-Range ({content_range!r})")
    total = _range_total(content_range)
    return first, total if total is not None else (first + sent if sent is not None else None)


def _range_total(content_range: str) -> int | None:
    """The file size in a Content-Range header (``bytes 0-9/1234`` or ``bytes */1234``), or None."""
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _transient(err: BaseException) -> bool:
    """Worth retrying: a timeout, a lost connection, a transfer cut short, a busy server. Not: no
    such host, connection refused (offline, or no server there), other HTTP errors, a wrong file."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in (408, 429) or err.code >= 500
    if isinstance(err, urllib.error.URLError):
        return isinstance(err.reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError))
    if isinstance(err, (ConnectionRefusedError, socket.gaierror)):
        return False
    return isinstance(err, (_Interrupted, TimeoutError, ConnectionError, http.client.HTTPException))


def _reason(err: BaseException, timeout: float) -> str:
    """One short line on why a request failed."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, (_SourceFailed, _Interrupted)):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return one_line(err, typed=True, limit=200)


def size_text(n: int) -> str:
    """A byte count for people: ``'65.3 MiB'``, ``'12.0 KiB'``, ``'512 bytes'``."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} bytes"


# --------------------------------------------------------------------------------------------
# Google Drive's confirmation page


class _Page(HTMLParser):
    """The forms (action and named inputs), links and title of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []
        self.title = ""
        self._in_form = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((named.get("action", ""), {}))
            self._in_form = True
        elif tag == "input" and self._in_form and named.get("name"):
            self.forms[-1][1][named["name"]] = named.get("value", "")
        elif tag == "a" and named.get("href"):
            self.links.append(named["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def confirmation_url(page: str, url: str, cookies: Iterable[Cookie] = ()) -> str | None:
    """Where Google Drive's "can't scan this file for viruses" page ``page`` (served at ``url``)
    leads to the file, or None if it is some other page.

    Recognised, newest first: a form with a ``confirm`` input (its action, with every named input
    as the query: ``id``, ``export``, ``confirm``, ``uuid``); a ``download_warning*`` cookie (its
    value as ``confirm=`` on ``url``); a link carrying ``confirm=``.
    """
    parsed = _Page()
    parsed.feed(page)
    for action, fields in parsed.forms:
        if "confirm" in fields:
            target = urllib.parse.urljoin(url, action or url)
            return target + ("&" if "?" in target else "?") + urllib.parse.urlencode(fields)
    for cookie in cookies:
        if cookie.name.startswith("download_warning") and cookie.value:
            scheme, netloc, path, query, fragment = urllib.parse.urlsplit(url)
            fields = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k != "confirm"] + [("confirm", cookie.value)]
            return urllib.parse.urlunsplit((scheme, netloc, path, urllib.parse.urlencode(fields), fragment))
    for link in parsed.links:
        if "confirm=" in link:
            return urllib.parse.urljoin(url, link)
    return None


def _title(page: bytes) -> str:
    parsed = _Page()
    parsed.feed(page[:PAGE_LIMIT].decode("utf-8", "replace"))
    title = " ".join(parsed.title.split())
    return f" ({title[:80]!r})" if title else ""
