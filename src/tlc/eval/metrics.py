"""PSNR and SSIM as the reference repositories compute them, and the protocols that use them.

Images are H x W x 3 RGB (or H x W x 1 / H x W grayscale) numpy arrays or torch tensors. uint8
images are on 0..255; any other dtype needs an explicit ``data_range`` (1.0 for images in [0, 1]).
Everything is computed in float64 on the 0..255 scale, so C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2
and the PSNR peak is 255 whatever ``data_range`` is (PSNR and SSIM are unchanged by that rescaling).

Definitions (those of the Restormer/MPRNet/BasicSR evaluation code). The conformance values are
reproduced within 3e-6 dB and 2e-8, except the 3-D SSIM: the references compute it in float32,
where E[x^2] - E[x]^2 on 0..255 values loses digits, and land up to 2.4e-5 from the float64 value.

- PSNR: ``10 log10(255^2 / MSE)``, MSE over all pixels and channels. Identical images give
  ``inf``. The references pick peak 1 when an image's maximum is <= 1; here the peak follows the
  dtype or ``data_range`` only, so a near-black uint8 image is not scored on the wrong scale.
- SSIM, ``mode="3d"`` (the default; MATLAB's ``ssim`` on an RGB array, and the definition under
  which published GoPro/HIDE numbers are comparable): the H x W x C array is one volume, filtered
  by the 11 x 11 x 11 Gaussian of sigma 1.5 (outer product of three 1-D kernels) with replicate
  padding of 5 on every axis; the SSIM map is averaged over the whole volume. On one channel this
  is the 2-D 11 x 11 Gaussian SSIM with replicate padding, which is BasicSR's Y-channel SSIM.
- SSIM, ``mode="2d"``: each channel on its own, 11 x 11 Gaussian of sigma 1.5, the SSIM map
  averaged over pixels at least 5 from the border (the positions where the window lies inside the
  image), then over channels. This is scikit-image's ``structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``;
  its boundary mode never reaches the pixels it averages. Needs H, W >= 11 after cropping. On one
  channel it is Wang's original ``SSIM_index.m`` (``filter2(..., 'valid')``, ``mean2`` of the map).
- SSIM, ``mode="box7"``: scikit-image's defaults, ``structural_similarity(..., data_range=...,
  channel_axis=-1)`` (``multichannel=True`` before 0.19): each channel on its own, 7 x 7 uniform
  window, sample covariances (variances times 49 / 48), map averaged over pixels at least 3 from
  the border, then over channels. Needs H, W >= 7 after cropping.
- ``y_channel=True``: score Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (BasicSR's
  MATLAB-compatible BT.601 luma on 0..255 values, not rounded). Inputs are RGB; a grayscale image
  is taken as its own luma, as BasicSR does. With ``y_rounded`` (protocol field), Y is MATLAB's
  ``rgb2ycbcr`` on uint8, which returns uint8: the same formula rounded half away from zero
  (:func:`tlc.eval.protocols.matlab_luma`).
- MAE (protocols with ``mae``): mean absolute difference over all pixels and channels, in units of
  the data range (images on [0, 1]).
- ``crop_border=b`` drops b pixels from every side before anything else (before the Y conversion
  and before SSIM's padding).

The benchmark presets in :data:`PROTOCOLS` ("rain", "dpdd", "sidd", "realblur") name the
reference evaluation they reproduce; see docs/benchmarks.md for the measured agreement.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch

from .._util import Hint, hinted
from .protocols import align_to_target, aligned_scores, matlab_luma

ImageLike = np.ndarray | torch.Tensor
SsimMode = Literal["3d", "2d", "box7"]

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "Protocol", "align_to_target", "psnr", "ssim", "to_uint8"]

_PEAK = 255.0
_C1 = (0.01 * _PEAK) ** 2
_C2 = (0.03 * _PEAK) ** 2
_WINDOW = 11
_SIGMA = 1.5
_RADIUS = _WINDOW // 2
# BT.601 luma weights for R, G, B on 0..255 values (BasicSR's bgr2ycbcr, y_only=True).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0


def _gaussian_1d(size: int = _WINDOW, sigma: float = _SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps, float64 (cv2.getGaussianKernel(11, 1.5) and scipy's alike)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


_TAPS = _gaussian_1d()
_SSIM_MODES = ("3d", "2d", "box7")
_BOX = 7


def _to_numpy(image: ImageLike, name: str) -> np.ndarray:
    """A numpy view or copy of ``image`` on the CPU, dtype untouched (bfloat16 -> float32)."""
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    if isinstance(image, np.ndarray):
        return image
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(image).__name__}")


def _as_hwc(image: ImageLike, name: str) -> np.ndarray:
    """``image`` as an H x W x C numpy array with C in (1, 3); checks rank, channels and dtype kind."""
    a = _to_numpy(image, name)
    if a.dtype.kind not in "uif":
        raise TypeError(f"{name} must have an integer or floating dtype, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        hint = " (a C x H x W tensor? use .permute(1, 2, 0))" if a.ndim == 3 and a.shape[0] in (1, 3) else ""
        raise ValueError(f"{name} must be H x W x 3, H x W x 1 or H x W, got shape {tuple(a.shape)}{hint}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(a.shape)}")
    return a


def _check_crop(crop_border: int, shape: tuple[int, ...]) -> int:
    if isinstance(crop_border, bool):
        raise TypeError(f"crop_border must be an int, got {crop_border!r}")
    try:
        b = operator.index(crop_border)
    except TypeError:
        raise TypeError(f"crop_border must be an int, got {crop_border!r}") from None
    if b < 0:
        raise ValueError(f"crop_border must be >= 0, got {b}")
    if 2 * b >= min(shape[0], shape[1]):
        raise hinted(ValueError, Hint("Protocol", f"crop_border={b}", "",
                                      f" leaves nothing of a {shape[0]} x {shape[1]} image"))
    return b


def _check_data_range(data_range: float) -> float:
    if isinstance(data_range, (bool, np.bool_)):
        raise TypeError(f"data_range must be a number, got {data_range!r}")
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a number, got {data_range!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be positive and finite, got {data_range!r}")
    return value


def _prepare(
    restored: ImageLike,
    target: ImageLike,
    crop_border: int,
    y_channel: bool,
    data_range: float | None,
    y_rounded: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair and return it cropped, in float64 on the 0..255 scale, H x W x C (C = 1 for Y)."""
    a = _as_hwc(restored, "restored")
    b = _as_hwc(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: restored {tuple(a.shape)} vs target {tuple(b.shape)}")
    if data_range is None:
        if a.dtype != np.uint8 or b.dtype != np.uint8:
            raise TypeError(
                f"uint8 images are scored on 0..255; for dtypes {a.dtype} / {b.dtype} pass data_range "
                "(1.0 for images in [0, 1]) or quantize with to_uint8 first"
            )
        scale = 1.0
    else:
        if (a.dtype == np.uint8) != (b.dtype == np.uint8):
            raise TypeError(f"dtype mismatch: restored {a.dtype} vs target {b.dtype}; both share one data_range")
        scale = _PEAK / _check_data_range(data_range)
    c = _check_crop(crop_border, a.shape)
    if c:
        a, b = a[c:-c, c:-c], b[c:-c, c:-c]
    pair = []
    for name, x in (("restored", a), ("target", b)):
        x = x.astype(np.float64)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinity")
        if scale != 1.0:
            x *= scale
        if y_channel and x.shape[2] == 3:
            x = (matlab_luma(x) if y_rounded else x @ _Y_WEIGHTS + _Y_OFFSET)[:, :, None]
        pair.append(x)
    return pair[0], pair[1]


def _blur_axis(x: np.ndarray, axis: int, pad: bool) -> np.ndarray:
    """1-D Gaussian along ``axis``: replicate-padded (same length) or valid (length - 10)."""
    r = _RADIUS
    if pad:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (r, r)
        x = np.pad(x, widths, mode="edge")
    n = x.shape[axis] - 2 * r

    def shifted(start: int) -> np.ndarray:
        return x[(slice(None),) * axis + (slice(start, start + n),)]

    out = _TAPS[r] * shifted(r)
    tmp = np.empty_like(out)
    # The taps are symmetric: add the mirrored pair first, one multiply per pair.
    for k in range(r):
        np.add(shifted(k), shifted(2 * r - k), out=tmp)
        tmp *= _TAPS[k]
        out += tmp
    return out


def _channel_matrix(c: int) -> np.ndarray:
    """(C, C) matrix of the 11-tap Gaussian along a length-C axis with replicate padding of 5."""
    m = np.zeros((c, c))
    for i in range(c):
        for k, w in enumerate(_TAPS):
            m[i, min(max(i + k - _RADIUS, 0), c - 1)] += w
    return m


def _blur(x: np.ndarray, mode: SsimMode) -> np.ndarray:
    """Gaussian-filter a (C, H, W) map: 3-D replicate-padded, or per-channel 2-D valid."""
    pad = mode == "3d"
    f = _blur_axis(_blur_axis(x, 1, pad), 2, pad)
    if pad and f.shape[0] > 1:
        f = np.tensordot(_channel_matrix(f.shape[0]), f, axes=1)
    return f


def _box_valid(x: np.ndarray) -> np.ndarray:
    """(C, H, W) map averaged over 7 x 7 windows per plane, valid positions only (H - 6, W - 6)."""
    h, w = x.shape[1] - _BOX + 1, x.shape[2] - _BOX + 1
    rows = sum(x[:, k : k + h, :] for k in range(_BOX))
    return sum(rows[:, :, k : k + w] for k in range(_BOX)) / float(_BOX * _BOX)


def _ssim_box(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-image's default SSIM (7 x 7 uniform, sample covariance) of (C, H, W) maps on 0..255."""
    if min(x.shape[1], x.shape[2]) < _BOX:
        raise ValueError(f"7 x 7 SSIM needs at least {_BOX} x {_BOX} pixels, got {x.shape[1]} x {x.shape[2]}")
    norm = _BOX * _BOX / (_BOX * _BOX - 1.0)
    mu_x, mu_y = _box_valid(x), _box_valid(y)
    var_x = norm * (_box_valid(x * x) - mu_x * mu_x)
    var_y = norm * (_box_valid(y * y) - mu_y * mu_y)
    cov = norm * (_box_valid(x * y) - mu_x * mu_y)
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x * mu_x + mu_y * mu_y + _C1) * (var_x + var_y + _C2)
    return float(np.mean(np.mean(num / den, axis=(1, 2))))


def _ssim_value(x: np.ndarray, y: np.ndarray, mode: SsimMode) -> float:
    """Mean SSIM of two H x W x C float64 arrays on the 0..255 scale (see the module docstring)."""
    if mode not in _SSIM_MODES:
        raise ValueError(f"mode must be '3d', '2d' or 'box7', got {mode!r}")
    if mode == "box7":
        return _ssim_box(np.ascontiguousarray(x.transpose(2, 0, 1)), np.ascontiguousarray(y.transpose(2, 0, 1)))
    if mode == "2d" and min(x.shape[0], x.shape[1]) < _WINDOW:
        raise ValueError(f"2-D SSIM needs at least {_WINDOW} x {_WINDOW} pixels, got {x.shape[0]} x {x.shape[1]}")
    # Channels first, so that both spatial passes and the channel mix run on contiguous planes.
    x = np.ascontiguousarray(x.transpose(2, 0, 1))
    y = np.ascontiguousarray(y.transpose(2, 0, 1))
    mu_x, mu_y = _blur(x, mode), _blur(y, mode)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_sum = _blur(x * x, mode) - mu_xx
    var_sum += _blur(y * y, mode) - mu_yy
    cov = _blur(x * y, mode) - mu_xy
    num = (2 * mu_xy + _C1) * (2 * cov + _C2)
    den = (mu_xx + mu_yy + _C1) * (var_sum + _C2)
    return float(np.mean(num / den))


def _psnr_value(x: np.ndarray, y: np.ndarray) -> float:
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(_PEAK**2 / mse)


def psnr(
    restored: ImageLike,
    target: ImageLike,
    crop_border: int = 0,
    y_channel: bool = False,
    *,
    data_range: float | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB.

    Args:
        restored, target: H x W x 3 RGB (or H x W x 1, H x W) numpy arrays or torch tensors of one
            shape; uint8 on 0..255, or any dtype with ``data_range``.
        crop_border: pixels dropped from every side first.
        y_channel: score BT.601 luma instead of RGB.
        data_range: value span of the inputs (1.0 for [0, 1]); required unless both are uint8.

    Returns:
        ``10 log10(255^2 / MSE)`` with MSE over all pixels and channels in float64, on the 0..255
        scale (equal to peak ``data_range`` on the raw values); ``math.inf`` for identical images.
    """
    x, y = _prepare(restored, target, crop_border, y_channel, data_range)
    return _psnr_value(x, y)


def ssim(
    restored: ImageLike,
    target: ImageLike,
    crop_border: int = 0,
    y_channel: bool = False,
    *,
    mode: SsimMode = "3d",
    data_range: float | None = None,
) -> float:
    """Mean structural similarity, in [-1, 1]; 1.0 for identical images.

    Args:
        restored, target: as for :func:`psnr`.
        crop_border: pixels dropped from every side first.
        y_channel: score BT.601 luma instead of RGB.
        mode: ``"3d"`` (the reference repositories' and MATLAB's SSIM on RGB arrays; on one channel
            the 2-D replicate-padded SSIM), ``"2d"`` (scikit-image's per-channel Gaussian SSIM,
            averaged away from a 5-pixel border) or ``"box7"`` (scikit-image's default 7 x 7
            uniform SSIM with sample covariances). See the module docstring.
        data_range: value span of the inputs (1.0 for [0, 1]); required unless both are uint8.

    Returns:
        SSIM with an 11-tap Gaussian of sigma 1.5 per axis (or the 7 x 7 box), C1 = (0.01 * 255)^2,
        C2 = (0.03 * 255)^2 on the 0..255 scale, computed in float64.
    """
    if mode not in _SSIM_MODES:
        raise ValueError(f"mode must be '3d', '2d' or 'box7', got {mode!r}")
    x, y = _prepare(restored, target, crop_border, y_channel, data_range)
    return _ssim_value(x, y, mode)


def to_uint8(image: ImageLike) -> ImageLike:
    """Quantise a float image in [0, 1] as the reference test scripts do before scoring.

    Clamps to [0, 1], multiplies by 255 and rounds half to even (``np.rint``, ``torch.round``:
    BasicSR's ``.round()`` and scikit-image's ``img_as_ubyte``), in the input's precision (float16
    and bfloat16 in float32), so x * 255 lands on the same side of .5 as in the references.

    Args:
        image: floating numpy array or torch tensor of any shape, values nominally in [0, 1].

    Returns:
        uint8 array of the same shape and kind (numpy array, or tensor on the same device).
    """
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise TypeError(f"to_uint8 expects a floating image, got {image.dtype}")
        t = image.detach()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        if torch.isnan(t).any():
            raise ValueError("image contains NaN")
        return t.clamp(0, 1).mul(255).round().to(torch.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype.kind != "f":
            raise TypeError(f"to_uint8 expects a floating image, got {image.dtype}")
        a = image if image.dtype in (np.float32, np.float64) else image.astype(np.float32)
        if np.isnan(a).any():
            raise ValueError("image contains NaN")
        return np.rint(np.clip(a, 0, 1) * a.dtype.type(255)).astype(np.uint8)
    raise TypeError(f"image must be a numpy array or a torch tensor, got {type(image).__name__}")


def _is_float(image: ImageLike) -> bool:
    if isinstance(image, torch.Tensor):
        return image.is_floating_point()
    return isinstance(image, np.ndarray) and image.dtype.kind == "f"


def _integer_peak(image: ImageLike) -> float | None:
    """255 for uint8, 65535 for uint16 images, None otherwise."""
    if isinstance(image, torch.Tensor):
        return {torch.uint8: 255.0, torch.uint16: 65535.0}.get(image.dtype)
    if isinstance(image, np.ndarray):
        return {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype)
    return None


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: how outputs are brought to a scoring dtype, and which metrics.

    Attributes:
        name: key in :data:`PROTOCOLS`.
        y_channel: score BT.601 luma instead of RGB.
        crop_border: pixels dropped from every side before scoring.
        ssim: ``"3d"``, ``"2d"`` or ``"box7"``, the ``mode`` of :func:`ssim`.
        quantize: float images in [0, 1] go through :func:`to_uint8` (clamp, * 255, round) as the
            reference scripts do when they save PNGs; uint8 images pass unchanged, uint16 images
            are divided by 65535 and quantized the same way. When False, float images are clamped
            to [0, 1] and scored unrounded (uint8 images are divided by 255, uint16 by 65535
            first): PSNR with peak 1, SSIM with C1 = 0.01^2, C2 = 0.03^2 on [0, 1], which is the
            same SSIM as on x * 255 with the 255-scale constants.
        y_rounded: with ``y_channel``, round Y to integers as MATLAB's ``rgb2ycbcr`` does on uint8
            images (needs ``quantize``).
        mae: also report ``"mae"`` (mean absolute error on [0, 1]) from :meth:`score_all`.
        align: RealBlur scoring (:func:`tlc.eval.protocols.aligned_scores`): the output is aligned
            to the target (intensity scale, ECC homography) and PSNR and SSIM are taken over the
            valid region; needs ``ssim="2d"`` (the per-channel Gaussian SSIM it masks), no
            ``y_channel`` and no ``crop_border``.
    """

    name: str
    y_channel: bool = False
    crop_border: int = 0
    ssim: SsimMode = "3d"
    quantize: bool = True
    y_rounded: bool = False
    mae: bool = False
    align: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        flags = (self.y_channel, self.quantize, self.y_rounded, self.mae, self.align)
        if not all(isinstance(f, bool) for f in flags):
            raise TypeError("y_channel, quantize, y_rounded, mae and align must be bools")
        if self.ssim not in _SSIM_MODES:
            raise ValueError(f"ssim must be '3d', '2d' or 'box7', got {self.ssim!r}")
        if isinstance(self.crop_border, bool) or not isinstance(self.crop_border, int) or self.crop_border < 0:
            raise ValueError(f"crop_border must be an int >= 0, got {self.crop_border!r}")
        if self.y_rounded and not (self.y_channel and self.quantize):
            raise ValueError("y_rounded rounds the luma of 8-bit images: it needs y_channel=True and quantize=True")
        if self.align and (self.y_channel or self.crop_border or self.ssim != "2d"):
            raise ValueError("align (RealBlur) scores RGB over the valid region: it needs ssim='2d', "
                             "no y_channel and no crop_border")

    def _scoring_pair(self, restored: ImageLike, target: ImageLike) -> tuple[ImageLike, ImageLike, float]:
        pair = []
        for name, image in (("restored", restored), ("target", target)):
            peak = _integer_peak(image)
            if peak == 255.0 and self.quantize:
                pair.append(image)
            elif peak is not None:
                a = _to_numpy(image, name).astype(np.float64) / peak
                pair.append(to_uint8(a) if self.quantize else a)
            elif _is_float(image):
                if self.quantize:
                    pair.append(to_uint8(image))
                else:
                    a = _to_numpy(image, name).astype(np.float64)
                    if not np.isfinite(a).all():
                        raise ValueError(f"{name} contains NaN or infinity")
                    pair.append(np.clip(a, 0.0, 1.0))
            else:
                kind = f"{type(image).__name__} of dtype {getattr(image, 'dtype', None)}"
                raise TypeError(f"{name} must be uint8, uint16 or floating in [0, 1], got {kind}")
        return pair[0], pair[1], 255.0 if self.quantize else 1.0

    def score_all(self, restored: ImageLike, target: ImageLike) -> dict[str, float]:
        """Every metric of this protocol for one pair.

        Args:
            restored, target: H x W x 3 RGB (or H x W x 1, H x W), uint8 on 0..255, uint16 on
                0..65535 or floating in [0, 1], numpy arrays or torch tensors (a C x H x W tensor
                needs ``.permute(1, 2, 0)``); the two may differ in dtype.

        Returns:
            ``{"psnr": dB, "ssim": value}``, plus ``"mae"`` (on [0, 1]) when :attr:`mae` is set.
            PSNR is ``math.inf`` for identical images.
        """
        a, b, data_range = self._scoring_pair(restored, target)
        if self.align:
            pa = _as_hwc(a, "restored").astype(np.float64) / data_range
            pb = _as_hwc(b, "target").astype(np.float64) / data_range
            return aligned_scores(pa, pb)
        x, y = _prepare(a, b, self.crop_border, self.y_channel, data_range, self.y_rounded)
        scores = {"psnr": _psnr_value(x, y), "ssim": _ssim_value(x, y, self.ssim)}
        if self.mae:
            scores["mae"] = float(np.mean(np.abs(x - y))) / _PEAK
        return scores

    def score(self, restored: ImageLike, target: ImageLike) -> tuple[float, float]:
        """(PSNR in dB, SSIM) of ``restored`` against ``target`` under this protocol.

        Args:
            restored, target: as for :meth:`score_all`.
        """
        scores = self.score_all(restored, target)
        return scores["psnr"], scores["ssim"]

    def score_blocks(self, restored: ImageLike, target: ImageLike) -> dict[str, float]:
        """Mean of :meth:`score_all` over a stack of blocks (SIDD's 40 x 32 validation blocks).

        Args:
            restored, target: (..., H, W, C) arrays of one shape, e.g. (40, 32, 256, 256, 3); every
                leading index is one block, scored on its own.

        Returns:
            Each key of :meth:`score_all` averaged over the blocks (the MATLAB script's
            ``total / (40 * 32)``).
        """
        a, b = _to_numpy(restored, "restored"), _to_numpy(target, "target")
        if a.shape != b.shape or a.ndim < 3:
            raise ValueError(f"blocks must be (..., H, W, C) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        lead = a.shape[:-3] if a.ndim > 3 else ()
        a = a.reshape((-1,) + a.shape[-3:]) if lead else a[None]
        b = b.reshape((-1,) + b.shape[-3:]) if lead else b[None]
        totals: dict[str, float] = {}
        for i in range(a.shape[0]):
            for key, value in self.score_all(a[i], b[i]).items():
                totals[key] = totals.get(key, 0.0) + value
        return {key: value / a.shape[0] for key, value in totals.items()}


PROTOCOLS: Mapping[str, Protocol] = MappingProxyType(
    {
        # GoPro/HIDE as the reference repositories and MATLAB score them: uint8 RGB, 3-D SSIM.
        "gopro": Protocol("gopro"),
        # The same on BT.601 luma (BasicSR's test_y_channel=True).
        "y": Protocol("y", y_channel=True),
        # SIDD-style: float outputs scored without rounding.
        "float": Protocol("float", quantize=False),
        # scikit-image's per-channel Gaussian SSIM (structural_similarity, channel_axis=-1).
        "per-channel-2d": Protocol("per-channel-2d", ssim="2d"),
        # Rain13k test sets, Restormer Deraining/evaluate_PSNR_SSIM.m: 8-bit outputs, Y of MATLAB's
        # rgb2ycbcr (uint8, rounded), PSNR 20 log10(255 / RMSE), Wang's SSIM_index ('valid' 11 x 11
        # Gaussian, sigma 1.5, L = 255).
        "rain": Protocol("rain", y_channel=True, y_rounded=True, ssim="2d"),
        # DPDD, Restormer Defocus_Deblurring/test_*_defocus_deblur.py with its utils.py: unrounded
        # floats on [0, 1] (16-bit images from 16 bits), PSNR peak 1, scikit-image's default SSIM
        # (7 x 7 box, sample covariance, data_range=1, per channel), sklearn's MAE per channel.
        "dpdd": Protocol("dpdd", quantize=False, ssim="box7", mae=True),
        # SIDD validation blocks, MPRNet/Restormer evaluate_SIDD.m: float blocks on [0, 1] (the
        # target im2single), MATLAB psnr (peak 1) and ssim on the 256 x 256 x 3 array (3-D
        # Gaussian, replicate padding); the mean over blocks is score_blocks.
        "sidd": Protocol("sidd", quantize=False),
        # RealBlur-J/-R, MPRNet Deblurring/evaluate_RealBlur.py: 8-bit outputs on [0, 1], intensity
        # scale + ECC homography alignment, PSNR and masked per-channel Gaussian SSIM over the
        # valid region.
        "realblur": Protocol("realblur", ssim="2d", align=True),
    }
)
"""Named presets, read-only."""

DEFAULT_PROTOCOL: Protocol = PROTOCOLS["gopro"]
