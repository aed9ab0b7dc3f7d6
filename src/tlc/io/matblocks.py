"""Blocks of images in MATLAB .mat files, as SIDD distributes its validation set.

``ValidationNoisyBlocksSrgb.mat`` and ``ValidationGtBlocksSrgb.mat`` each hold one uint8 array of
40 x 32 x 256 x 256 x 3 (image, block, row, column, RGB) under the key of the file's stem. Both
MATLAB layouts are read: v5 (scipy.io.loadmat) and v7.3, which is HDF5 with a 512-byte MATLAB
header and every array stored with its axes reversed (MATLAB is column-major), so it is read
with h5py and transposed back.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .image import Image, ImageError, PathLike

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_V73_USERBLOCK = 512


def mat_version(path: PathLike) -> str:
    """"7.3" for a MATLAB v7.3 (HDF5) file, "5" for a v5/v7 one.

    Raises:
        ImageError: the file is missing or not a MATLAB file.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(_V73_USERBLOCK + len(_HDF5_SIGNATURE))
    except OSError as err:
        raise ImageError(f"{p}: cannot read it ({err.strerror or err})") from None
    if head[_V73_USERBLOCK:] == _HDF5_SIGNATURE or head.startswith(_HDF5_SIGNATURE):
        return "7.3"
    if head.startswith(b"MATLAB 5.0 MAT-file") or (len(head) >= 128 and head[126:128] in (b"IM", b"MI")):
        return "5"
    raise ImageError(f"{p}: not a MATLAB .mat file")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImageError("reading or writing a MATLAB v7.3 (HDF5) .mat file needs h5py: pip install h5py") from None
    return h5py


def read_mat_array(path: PathLike, key: str) -> np.ndarray:
    """The array stored under ``key`` in a MATLAB v5 or v7.3 file, in MATLAB's axis order.

    Raises:
        ImageError: not a .mat file, no such key (the message lists the keys there), or v7.3
            without h5py installed.
    """
    p = Path(path)
    if mat_version(p) == "7.3":
        h5py = _h5py()
        with h5py.File(p, "r") as f:
            if key not in f:
                raise ImageError(f"{p}: no array {key!r}; it has {', '.join(sorted(f.keys())) or 'none'}")
            return np.ascontiguousarray(f[key][()].transpose())
    import scipy.io

    try:
        content = scipy.io.loadmat(p)
    except (ValueError, OSError) as err:
        raise ImageError(f"{p}: cannot read this .mat file ({err})") from None
    if key not in content:
        keys = sorted(k for k in content if not k.startswith("__"))
        raise ImageError(f"{p}: no array {key!r}; it has {', '.join(keys) or 'none'}")
    return np.asarray(content[key])


def write_mat_array(path: PathLike, key: str, array: np.ndarray, *, version: str = "5") -> Path:
    """Write ``array`` under ``key`` as a MATLAB v5 file (scipy) or v7.3 file (h5py), in MATLAB's
    axis order (v7.3 stores it transposed, as MATLAB does), so MATLAB's ``load`` reads the same array."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if version == "5":
        import scipy.io

        scipy.io.savemat(p, {key: array}, do_compression=False)
        return p
    if version != "7.3":
        raise ValueError(f"version must be '5' or '7.3', got {version!r}")
    h5py = _h5py()
    with h5py.File(p, "w", userblock_size=_V73_USERBLOCK) as f:
        dataset = f.create_dataset(key, data=np.ascontiguousarray(np.asarray(array).transpose()))
        dataset.attrs["MATLAB_class"] = np.bytes_({np.uint8: "uint8", np.float32: "single",
                                                   np.float64: "double"}.get(array.dtype.type, "double"))
    text = f"MATLAB 7.3 MAT-file, Platform: tlc, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} HDF5 schema 1.00 ."
    header = text.encode("ascii").ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"
    with p.open("r+b") as f:
        f.write(header.ljust(_V73_USERBLOCK, b"\0"))
    return p


def _blocks(path: Path, key: str) -> np.ndarray:
    array = read_mat_array(path, key)
    if array.ndim != 5 or array.shape[4] != 3:
        raise ImageError(f"{path}: {key} has shape {array.shape}; SIDD blocks are images x blocks x H x W x 3 "
                         "(40 x 32 x 256 x 256 x 3)")
    if array.dtype not in (np.uint8, np.float32, np.float64):
        raise ImageError(f"{path}: {key} is {array.dtype}; expected uint8 (or float in [0, 1])")
    return array


def block_name(image: int, block: int) -> str:
    """The pair name of block ``block`` of image ``image`` (0-based): "II_BB"."""
    return f"{image:02d}_{block:02d}"


class MatBlocks:
    """A noisy and a ground-truth .mat file of blocks, read once when first needed.

    Attributes:
        input_path, target_path: the two files.
        input_key, target_key: the arrays' names in them.
    """

    def __init__(self, input_path: PathLike, target_path: PathLike, input_key: str, target_key: str) -> None:
        self.input_path, self.target_path = Path(input_path), Path(target_path)
        self.input_key, self.target_key = input_key, target_key
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(degraded, target) blocks, each (images, blocks, H, W, 3), as stored."""
        if self._arrays is None:
            a = _blocks(self.input_path, self.input_key)
            b = _blocks(self.target_path, self.target_key)
            if a.shape != b.shape:
                raise ImageError(f"{self.input_path} holds {a.shape} blocks but {self.target_path} {b.shape}")
            self._arrays = (a, b)
        return self._arrays

    def names(self) -> list[str]:
        """Every block's pair name, image-major."""
        shape = self.arrays()[0].shape
        return [block_name(i, j) for i in range(shape[0]) for j in range(shape[1])]

    def load(self, name: str) -> tuple[Image, Image]:
        """(degraded, target) of block ``name`` as images in [0, 1] (uint8 / 255)."""
        i, j = (int(part) for part in name.split("_"))
        return tuple(self._image(array[i, j], path) for array, path in  # type: ignore[return-value]
                     zip(self.arrays(), (self.input_path, self.target_path)))

    @staticmethod
    def _image(block: np.ndarray, path: Path) -> Image:
        if block.dtype == np.uint8:
            pixels, depth = block.astype(np.float32) / np.float32(255), 8
        else:
            pixels, depth = np.clip(block, 0, 1).astype(np.float32), 16
        return Image(pixels=np.ascontiguousarray(pixels), alpha=None, bit_depth=depth, mode="rgb", path=path)


def write_blocks(path: PathLike, key: str, blocks: np.ndarray, *, version: str = "5") -> Path:
    """Write restored blocks (images, blocks, H, W, 3) as a .mat file of the SIDD layout.

    Args:
        blocks: uint8 on 0..255, or floating in [0, 1] (written as uint8, rounded half to even,
            as the noisy file stores its blocks).
        version: "5" (scipy) or "7.3" (HDF5, needs h5py).
    """
    a = np.asarray(blocks)
    if a.ndim != 5 or a.shape[4] != 3:
        raise ValueError(f"blocks must be images x blocks x H x W x 3, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    return write_mat_array(path, key, a, version=version)
