"""The decoded image and the RGB model boundary: pixels in [0, 1] to a (1, 3, H, W) tensor and back."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Mode = Literal["gray", "rgb", "gray+alpha", "rgba"]
PathLike = str | os.PathLike


class ImageError(ValueError):
    """An image file that cannot be read, written or paired as asked; the message is one line naming it."""


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded image.

    Attributes:
        pixels: (H, W, C) float32 in [0, 1], C = 1 (gray) or 3 (RGB).
        alpha: (H, W) float32 in [0, 1] (1 = opaque), or None.
        bit_depth: 8 or 16, the sample depth of the file (1, 2 and 4-bit PNGs are read as 8).
        mode: "gray", "rgb", "gray+alpha" or "rgba".
        path: the file it was read from.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: Mode
    path: Path | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]



def to_model_input(image: Image) -> torch.Tensor:
    """The (1, 3, H, W) float32 RGB tensor a restoration model takes.

    Gray is repeated into R = G = B; alpha is dropped (carry ``image.alpha`` over with
    :func:`from_model_output`). The tensor owns its memory.
    """
    pixels = image.pixels
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    chw = np.array(pixels.transpose(2, 0, 1), dtype=np.float32, order="C", copy=True)
    return torch.from_numpy(chw)[None]


def from_model_output(tensor: torch.Tensor, like: Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and alpha to write for a model's output on ``like``.

    Args:
        tensor: (1, 3, H, W) or (3, H, W) RGB output, any device and floating dtype; H, W must be
            ``like``'s.
        like: the image the model was given.

    Returns:
        (pixels, alpha): pixels (H, W, 3) float32 clamped to [0, 1], or (H, W, 1) when ``like``
        is gray: the mean of the three channels, which is the nearest gray image in the
        least-squares sense and averages out channel-independent noise (luma weights would
        favour the green channel's errors). alpha is ``like.alpha`` unchanged.
    """
    t = tensor.detach()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (1, 3, H, W) or (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    if tuple(t.shape[1:]) != (like.height, like.width):
        raise ValueError(f"output is {t.shape[2]} x {t.shape[1]} but the input was {like.width} x {like.height}")
    rgb = t.to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    if like.pixels.shape[2] == 1:
        pixels = rgb.mean(axis=2, keepdims=True, dtype=np.float32)
    else:
        pixels = np.ascontiguousarray(rgb)
    return pixels, like.alpha
