"""Images in LMDB databases, as BasicSR-based repositories (NAFNet) distribute their test sets.

A database is a folder ``NAME.lmdb/`` holding LMDB's ``data.mdb`` and ``lock.mdb`` and BasicSR's
``meta_info.txt``, one line per image: ``KEY.png (H,W,C) COMPRESSION_LEVEL``. Each value is the
image encoded as a PNG file (``cv2.imencode``, so 8 or 16-bit, gray or BGR as stored), under the
image's name without its extension as an ASCII key. The input and target databases of a test
set use the same keys for a pair. NAFNet's copies: GoPro's test set as ``test/input.lmdb`` +
``test/target.lmdb``, SIDD's validation blocks as ``val/input_crops.lmdb`` + ``val/gt_crops.lmdb``.

Databases are opened read-only without the lock file (``lock=False``), so a read-only copy works
and nothing is written next to it. LMDB maps ``data.mdb`` into memory, where reading a page past
the end of a truncated file kills the process (SIGBUS), so the file's size is checked against
the database's last page before anything is read.
"""

from __future__ import annotations

from pathlib import Path

from .image import Image, ImageError, PathLike
from .read import decode_image

META_INFO = "meta_info.txt"
DATA_FILE = "data.mdb"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise ImageError("reading an LMDB dataset needs the lmdb package: pip install lmdb") from None
    return lmdb


def is_lmdb(folder: PathLike) -> bool:
    """Whether ``folder`` is an LMDB database folder (it holds ``data.mdb``)."""
    return (Path(folder) / DATA_FILE).is_file()


def open_lmdb(folder: PathLike):
    """The read-only ``lmdb.Environment`` of ``folder``, checked whole.

    Raises:
        ImageError: no ``data.mdb``, not an LMDB file, or ``data.mdb`` shorter than the database
            it describes (truncated: reading it would crash the process); one line naming it.
    """
    lmdb = _lmdb()
    p = Path(folder)
    data = p / DATA_FILE
    if not data.is_file():
        raise ImageError(f"{p}: not an LMDB database (no {DATA_FILE})")
    try:
        env = lmdb.open(str(p), readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
    except lmdb.Error as err:
        raise ImageError(f"{p}: cannot open this LMDB database ({_lmdb_message(err)})") from None
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = data.stat().st_size
    except (lmdb.Error, OSError) as err:
        env.close()
        raise ImageError(f"{p}: cannot read this LMDB database ({_lmdb_message(err)})") from None
    if size < needed:
        env.close()
        raise ImageError(f"{p}: {DATA_FILE} is truncated ({size} bytes of the {needed} its database needs); "
                         "copy or download it again")
    return env


def _lmdb_message(err: Exception) -> str:
    # py-lmdb prefixes its messages with the path ("x.lmdb: MDB_INVALID: ..."); the caller names it.
    text = " ".join(str(err).split())
    return text.split(": ", 1)[1] if ": MDB_" in text else text


def _key_of(line: str) -> str | None:
    """The key of a meta_info.txt line ("0001_s001.png (512,512,3) 1" -> "0001_s001"), None if blank."""
    fields = line.split()
    if not fields:
        return None
    name = fields[0]
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in _IMAGE_SUFFIXES else name


def lmdb_keys(folder: PathLike) -> list[str]:
    """The image keys of a database that are present in it, in the order of ``meta_info.txt``
    (without one: every key of the database, in LMDB's byte order).

    A key that ``meta_info.txt`` lists but the database lacks is left out, so its pair counts as
    unmatched.

    Raises:
        ImageError: not a readable database (see :func:`open_lmdb`), a key that is not ASCII text,
            or an unreadable ``meta_info.txt``.
    """
    p = Path(folder)
    lmdb = _lmdb()
    env = open_lmdb(p)
    try:
        with env.begin(buffers=True) as txn:
            cursor = txn.cursor()
            meta = p / META_INFO
            if meta.is_file():
                try:
                    lines = meta.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError) as err:
                    raise ImageError(f"{meta}: cannot read it ({err})") from None
                listed = [key for key in map(_key_of, lines) if key is not None]
                return [key for key in dict.fromkeys(listed) if cursor.set_key(key.encode("utf-8"))]
            keys = []
            for raw in cursor.iternext(keys=True, values=False):
                try:
                    keys.append(bytes(raw).decode("ascii"))
                except UnicodeDecodeError:
                    raise ImageError(f"{p}: key {bytes(raw)[:40]!r} is not ASCII text; not a BasicSR image "
                                     "database") from None
            return keys
    except lmdb.Error as err:
        raise ImageError(f"{p}: cannot read this LMDB database ({_lmdb_message(err)})") from None
    finally:
        env.close()


class LmdbPairs:
    """Input/target pairs stored in two databases under shared keys.

    Each :meth:`load` opens the two databases and closes them again: an LMDB environment may be
    open only once per process, so one held open would stop a second reader of the same folder
    (another :func:`tlc.io.benchmarks.find_benchmark`); opening maps the file, which is cheap
    beside a restoration.

    Attributes:
        input_path, target_path: the two ``.lmdb`` folders.
        max_pixels: as for :func:`tlc.io.read_image` (default: its default).
    """

    def __init__(self, input_path: PathLike, target_path: PathLike, *, max_pixels: int | None = None) -> None:
        self.input_path, self.target_path = Path(input_path), Path(target_path)
        self.max_pixels = max_pixels

    def load(self, name: str) -> tuple[Image, Image]:
        """(degraded, target) of key ``name``: each value decoded as an image file is (RGB from
        OpenCV's BGR, 8 or 16-bit as encoded, gray kept gray).

        Raises:
            ImageError: a database cannot be read (see :func:`open_lmdb`), a side lacks the key, or
                its value is not a decodable image; one line naming "FOLDER.lmdb/KEY".
        """
        return self.read(self.input_path, name), self.read(self.target_path, name)

    def read(self, folder: Path, key: str) -> Image:
        """The image under ``key`` in the database ``folder``."""
        lmdb = _lmdb()
        env = open_lmdb(folder)
        try:
            with env.begin() as txn:
                value = txn.get(key.encode("utf-8"))
        except lmdb.Error as err:
            raise ImageError(f"{folder}/{key}: cannot read it ({_lmdb_message(err)})") from None
        finally:
            env.close()
        if value is None:
            raise ImageError(f"{folder}: no key {key!r}")
        return decode_image(value, folder / key, max_pixels=self.max_pixels)
