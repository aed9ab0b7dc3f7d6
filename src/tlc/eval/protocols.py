"""The computations specific to benchmark protocols: MATLAB's luma and RealBlur's alignment.

Pure numpy/OpenCV functions on H x W x C arrays; :mod:`.metrics` wires them into the named
:class:`~tlc.eval.metrics.Protocol` presets.

- :func:`matlab_luma`: the Y plane of MATLAB's ``rgb2ycbcr`` on a uint8 image (BT.601 studio
  swing, 16..235), which MATLAB returns as uint8, i.e. rounded. The Rain13k evaluation
  (Restormer ``Deraining/evaluate_PSNR_SSIM.m``) scores that rounded plane.
- :func:`align_to_target` / :func:`aligned_scores`: the RealBlur evaluation (MPRNet
  ``Deblurring/evaluate_RealBlur.py``, after Koehler et al.'s code): least-squares intensity scaling, an ECC
  homography found by OpenCV, a bicubic warp of the output and a nearest-neighbour warp of a mask,
  then PSNR and SSIM over the valid region.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["aligned_scores", "align_to_target", "matlab_luma"]

# rgb2ycbcr's first row for uint8 inputs: (1/255) * [65.481 128.553 24.966], offset 16, applied
# in double by imlincomb in this order, then rounded half away from zero to uint8.
_MATLAB_Y = tuple((1.0 / 255.0) * w for w in (65.481, 128.553, 24.966))
_ECC_ITERATIONS = 100
_ECC_BLUR = 5
_SSIM_RADIUS = 5  # scikit-image: int(truncate * sigma + 0.5) with truncate 3.5, sigma 1.5
_SSIM_SIGMA = 1.5


def matlab_luma(rgb: np.ndarray) -> np.ndarray:
    """Y of MATLAB's ``rgb2ycbcr`` for an 8-bit RGB image, as the uint8 values MATLAB returns.

    Args:
        rgb: H x W x 3 array of integer values 0..255 (uint8, or floats holding integers).

    Returns:
        H x W float64 array of integers in 16..235: ``round(16 + (65.481 R + 128.553 G + 24.966 B)
        / 255)``, computed in double as MATLAB's ``imlincomb`` does and rounded half away from zero.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"matlab_luma expects H x W x 3, got shape {tuple(rgb.shape)}")
    c = rgb.astype(np.float64)
    y = _MATLAB_Y[0] * c[:, :, 0]
    y += _MATLAB_Y[1] * c[:, :, 1]
    y += _MATLAB_Y[2] * c[:, :, 2]
    y += 16.0
    # Values are positive, so half away from zero is floor(y + 0.5); uint8 saturation never binds.
    return np.clip(np.floor(y + 0.5), 0.0, 255.0)


def _unit_float(image: np.ndarray, name: str) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"{name} must be H x W x 3 or H x W (x 1), got shape {tuple(image.shape)}")
    if image.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array in [0, 1], got {image.dtype}")
    out = image.astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return out


def _gray32(image: np.ndarray) -> np.ndarray:
    """float32 luma as ``cv2.cvtColor(..., COLOR_RGB2GRAY)`` of the reference's float32 images."""
    f = np.ascontiguousarray(image, dtype=np.float32)
    return cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.shape[2] == 3 else f[:, :, 0]


def align_to_target(restored: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align ``restored`` to ``target`` as the RealBlur evaluation does before scoring.

    Steps (``image_align`` of MPRNet ``Deblurring/evaluate_RealBlur.py``):

    1. intensity matching: ``zs = (sum(x z) / sum(z z)) z``, the least-squares scale of the
       output ``z`` onto the target ``x`` over all pixels and channels (no shift);
    2. ``cv2.findTransformECC`` with ``MOTION_HOMOGRAPHY`` from the identity, template the gray
       target, input the gray ``zs`` (float32, ``COLOR_RGB2GRAY``), 100 iterations (epsilon 0, so
       all of them run), no mask, Gaussian prefilter 5;
    3. ``zs`` warped with ``INTER_CUBIC | WARP_INVERSE_MAP``, ``BORDER_REFLECT``; a mask of ones
       warped with ``INTER_NEAREST | WARP_INVERSE_MAP``, constant 0 border.

    Args:
        restored, target: H x W x 3 (or H x W x 1, H x W) floating arrays in [0, 1] of one shape,
            at least 11 x 11 (8-bit images divided by 255, as the reference reads them).

    Returns:
        ``(aligned, mask, warp_matrix)``: ``aligned`` is the warped, intensity-matched output times
        the mask, H x W x C float64; ``mask`` is H x W bool, True where the warp drew from inside
        the output; ``warp_matrix`` is the 3 x 3 float64 homography mapping target pixel
        coordinates (x, y, 1) to output coordinates (ECC's convention).

    Raises:
        ValueError: ECC did not converge (e.g. uncorrelated images), or bad shapes.
    """
    z = _unit_float(restored, "restored")
    x = _unit_float(target, "target")
    if z.shape != x.shape:
        raise ValueError(f"shape mismatch: restored {tuple(z.shape)} vs target {tuple(x.shape)}")
    if min(x.shape[0], x.shape[1]) < 2 * _SSIM_RADIUS + 1:
        raise ValueError(f"RealBlur scoring needs at least 11 x 11 pixels, got {x.shape[0]} x {x.shape[1]}")
    zz = float(np.sum(z * z))
    if zz == 0.0:
        raise ValueError("restored is all zeros: intensity matching is undefined")
    zs = (float(np.sum(x * z)) / zz) * z
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, _ECC_ITERATIONS, 0.0)
    try:
        _, warp = cv2.findTransformECC(
            _gray32(x), _gray32(zs), np.eye(3, dtype=np.float32), cv2.MOTION_HOMOGRAPHY, criteria, None, _ECC_BLUR
        )
    except cv2.error as e:
        raise ValueError(f"RealBlur alignment failed (ECC did not converge): {str(e).strip()}") from None
    h, w = x.shape[:2]
    # float32 as in the reference (OpenCV's cubic warp of float64 images also drops border pixels).
    zr = cv2.warpPerspective(
        np.ascontiguousarray(zs, dtype=np.float32),
        warp, (w, h), flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    cr = cv2.warpPerspective(
        np.ones((h, w), np.float32),
        warp,
        (w, h),
        flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    mask = cr > 0.5
    zr = zr.reshape(x.shape).astype(np.float64) * mask[:, :, None]
    return zr, mask, warp.astype(np.float64)


def _gauss_valid(m: np.ndarray) -> np.ndarray:
    """(C, H, W) map filtered by the 11-tap Gaussian (sigma 1.5) per plane, valid positions only."""
    t = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (t / _SSIM_SIGMA) ** 2)
    taps /= taps.sum()
    n = 2 * _SSIM_RADIUS
    h, w = m.shape[1] - n, m.shape[2] - n
    rows = sum(taps[k] * m[:, k : k + h, :] for k in range(n + 1))
    return sum(taps[k] * rows[:, :, k : k + w] for k in range(n + 1))


def aligned_scores(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """RealBlur PSNR and SSIM: :func:`align_to_target`, then both over the valid region.

    - PSNR: ``10 log10(1 / MSE)`` with MSE = sum over all pixels and channels of
      ``(x m - aligned)^2`` divided by the number of valid (pixel, channel) entries.
    - SSIM: scikit-image's ``structural_similarity(x m, aligned, multichannel, gaussian_weights,
      use_sample_covariance=False, data_range=1, full=True)`` map (per channel, 11-tap Gaussian of
      sigma 1.5, C1 = 0.01^2, C2 = 0.03^2) on the masked images, multiplied by the mask, 5 pixels
      cropped from every side, summed per channel and divided by the mask's count there, then
      averaged over channels.

    Computed in float64 (the reference runs in float32 up to scikit-image's SSIM).

    Args:
        restored, target: as for :func:`align_to_target`.

    Returns:
        ``{"psnr": dB, "ssim": value}``; PSNR is ``inf`` when the valid region matches exactly.
    """
    aligned, mask, _ = align_to_target(restored, target)
    m = mask[:, :, None].astype(np.float64)
    x = _unit_float(target, "target") * m
    count = float(m.sum()) * x.shape[2]
    if count == 0.0:
        raise ValueError("RealBlur alignment left no valid pixel")
    mse = float(np.sum((x - aligned) ** 2)) / count
    value_psnr = math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)

    a = np.ascontiguousarray(x.transpose(2, 0, 1))
    b = np.ascontiguousarray(aligned.transpose(2, 0, 1))
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _gauss_valid(a), _gauss_valid(b)
    var_a = _gauss_valid(a * a) - mu_a * mu_a
    var_b = _gauss_valid(b * b) - mu_b * mu_b
    cov = _gauss_valid(a * b) - mu_a * mu_b
    smap = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    r = _SSIM_RADIUS
    inner = mask[r:-r, r:-r].astype(np.float64)
    valid = float(inner.sum())
    if valid == 0.0:
        raise ValueError("RealBlur alignment left no valid pixel away from the border")
    value_ssim = float(np.mean((smap * inner).sum(axis=(1, 2)) / valid))
    return {"psnr": value_psnr, "ssim": value_ssim}
