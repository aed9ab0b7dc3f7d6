"""Small helpers every layer above the ops shares, one implementation each.

``Pair`` and ``as_pair`` live in :mod:`tlc.ops._common` (the ops are the bottom layer and need
them); they are re-exported here so nothing above the ops reaches into a private ops module.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from .ops._common import Pair, as_pair

__all__ = ["Hint", "Pair", "as_pair", "atomic_write", "call_signature", "default_base_size", "exists_error",
           "eval_mode", "hinted", "one_line", "output_tensors", "write_atomically"]

BASE_SCALE = 1.5  # the paper's window: about 1.5x the training crop


def default_base_size(train: Pair) -> Pair:
    """The default local window (H, W) in image pixels for a training crop ``train`` (H, W):
    1.5x each side, rounded down."""
    return int(train[0] * BASE_SCALE), int(train[1] * BASE_SCALE)


def one_line(err: BaseException, *, limit: int | None = None, typed: bool = False, last: bool = False) -> str:
    """An error's message as one line for a report.

    Args:
        err: the exception.
        limit: longest result in characters (None: no limit); longer text is cut and ends in "...".
        typed: prefix the exception's class name ("ValueError: ...").
        last: take the last non-empty line instead of the first (OpenCV puts what went wrong
            last, after the source location).

    Returns:
        the chosen line with runs of white space folded, or the class name if the message is empty.
    """
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[-1] if last else lines[0]
    if typed:
        text = f"{type(err).__name__}: {text}"
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Hint:
    """An error message that names a keyword argument of a tlc function, kept in parts so that
    another front end can name its own setting instead (the command line names its flag; see
    :data:`tlc.cli.common.FLAGS`). The message is ``before + setting + after``.

    Attributes:
        function: the function taking the argument, e.g. "find_pairs".
        setting: the argument as a Python caller writes it, e.g. "strict=False" or "max_pixels=N".
        before, after: the message's text around the setting.
    """

    function: str
    setting: str
    before: str
    after: str = ""

    @property
    def parameter(self) -> str:
        """The keyword's name: "strict" for "strict=False"."""
        return self.setting.split("=", 1)[0]

    @property
    def value(self) -> str:
        """The value the setting gives the keyword ("False", "N"; "" when the setting has none)."""
        return self.setting.split("=", 1)[1] if "=" in self.setting else ""

    def message(self, setting: str | None = None) -> str:
        """The message with ``setting`` (default: the Python one) in its place."""
        return f"{self.before}{self.setting if setting is None else setting}{self.after}"


E = TypeVar("E", bound=BaseException)


def hinted(error_type: type[E], hint: Hint) -> E:
    """``error_type(hint.message())``, carrying ``hint`` as its ``hint`` attribute."""
    error = error_type(hint.message())
    error.hint = hint  # type: ignore[attr-defined]
    return error


def exists_error(path: Path) -> FileExistsError:
    return hinted(FileExistsError,
                  Hint("atomic_write", "overwrite=True", f"{path}: already exists (pass ", " to replace it)"))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Write a file so that readers see the old file or the whole new one, never a part.

    Yields a fresh temporary path in the same folder as ``path`` (so the final move is a rename
    within one filesystem); the caller writes the file there. On a clean exit the file is flushed
    to disk (fsync) and moved into place; on an exception, or afterwards, the temporary is removed.
    Without ``overwrite`` the move is a hard link, which fails if ``path`` appeared meanwhile;
    filesystems without hard links fall back to a check and ``os.replace``.

    Raises:
        FileExistsError: ``overwrite`` is False and ``path`` exists.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise exists_error(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        fd = os.open(temporary, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temporary, path)
            return
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise exists_error(path) from None
        except OSError:
            if path.exists():
                raise exists_error(path) from None
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, payload: bytes | str, *, overwrite: bool = True) -> None:
    """Write ``payload`` (bytes, or text as UTF-8) to ``path`` through :func:`atomic_write`."""
    data = payload.encode() if isinstance(payload, str) else payload
    with atomic_write(path, overwrite=overwrite) as temporary:
        # O_EXCL: the temporary name is fresh; 0o666 leaves the permissions to the umask.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def output_tensors(output: object) -> Iterator[torch.Tensor]:
    """Every tensor in a model's output: the tensor itself, or those in (nested) lists, tuples
    and dict values, in order."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (list, tuple)):
        for item in output:
            yield from output_tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from output_tensors(item)


def final_output(output: object) -> torch.Tensor:
    """The restored image from a model's output: the tensor itself, or the last of a list/tuple
    (HINet returns [stage 1, final], MPRNet [final])."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[-1], torch.Tensor):
        return output[-1]
    raise TypeError(f"the model returned {type(output).__name__}, not an image tensor or a list ending in one")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; every module's own train/eval flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.train(flag)


def call_signature(args: tuple, kwargs: dict, owner: object = None) -> tuple | None:
    """What decides the shapes a call of ``owner`` computes with: the shapes of its tensor
    arguments, its other arguments' values (numbers, strings, None, tuples and lists of them) and
    ``owner``'s own numbers (its attributes holding those: ``self.size = (h, w)`` set by a parent
    before the call). None where an argument is of another kind (no signature: nothing may be
    taken from an earlier call)."""
    try:
        own = () if owner is None else tuple(
            (name, _signature(value)) for name, value in vars(owner).items()
            if isinstance(value, (bool, int, float, tuple))
        )
        return _signature(args), tuple((name, _signature(value)) for name, value in kwargs.items()), own
    except _Unreadable:
        return None


class _Unreadable(Exception):
    pass


def _signature(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return "tensor", tuple(value.shape)
    if value is None or isinstance(value, (bool, int, float, str)):
        return type(value).__name__, value
    if isinstance(value, (tuple, list)):
        return type(value).__name__, tuple(_signature(v) for v in value)
    raise _Unreadable
