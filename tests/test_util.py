"""The shared helpers: one-line error text, the default window and atomic writes."""

from __future__ import annotations

import os

import pytest

from tlc._util import atomic_write, default_base_size, one_line, write_atomically


def test_one_line_takes_one_line_and_says_the_type_when_asked():
    err = ValueError("  first   line\n\nsecond line\n")
    assert one_line(err) == "first line"
    assert one_line(err, last=True) == "second line"
    assert one_line(err, typed=True) == "ValueError: first line"
    assert one_line(RuntimeError("")) == "RuntimeError"
    long = KeyError("x" * 50)
    assert one_line(long, limit=20) == "'" + "x" * 16 + "..." and len(one_line(long, limit=20)) == 20
    assert one_line(OSError("x" * 500)) == "x" * 500  # no limit unless asked


@pytest.mark.parametrize("train,base", [((256, 256), (384, 384)), ((33, 50), (49, 75)), ((1, 2), (1, 3))])
def test_default_base_size_is_one_and_a_half_times_rounded_down(train, base):
    assert default_base_size(train) == base


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(path) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    write_atomically(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_without_overwrite_refuses_an_existing_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        write_atomically(path, b"new", overwrite=False)
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["out.bin"]
