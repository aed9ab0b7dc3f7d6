"""Float64 re-derivation of the RealBlur evaluation, and the frozen case tests/test_protocols.py uses.

The reference (MPRNet ``Deblurring/evaluate_RealBlur.py``, which later papers reuse) aligns each
output to its target with OpenCV before scoring. This script re-derives every step in numpy
float64, from OpenCV's documented and published algorithms, without calling OpenCV:

- intensity matching ``zs = (sum(x z) / sum(z z)) z``;
- ECC homography (Evangelidis and Psarakis 2008, as ``cv2.findTransformECC`` runs it): both gray
  images (0.299 R + 0.587 G + 0.114 B) blurred by the 5 x 5 binomial kernel (OpenCV's fixed kernel
  for size 5, sigma 0) with reflect-101 borders, central-difference gradients of the input, then
  100 Gauss-Newton steps: warp image and gradients (bilinear, zero outside) and a mask (nearest),
  zero-mean both images over the mask, project onto the 8-column homography Jacobian, the
  illumination-compensated step ``lambda``, and the update of the 8 parameters (H[2, 2] stays 1);
- the final warp: bicubic (a = -0.75) with reflect borders, the mask by nearest neighbour;
- PSNR over the valid region and the masked per-channel Gaussian SSIM (11 taps, sigma 1.5).

OpenCV 4.x warps quantised the sampling position to 1/32 pixel (``INTER_BITS = 5``); OpenCV 5,
which tlc runs, samples at exact positions. ``SUBPIXEL = 32`` models the former, None the latter.

Run ``python bench/realblur_reference.py`` to rewrite tests/data/realblur_case.npz: a textured
target, the same texture seen through a known homography and an intensity scale of 0.9 (both 8-bit),
the homography, and the float64 results (warp matrix, PSNR, SSIM) the test compares tlc against.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SUBPIXEL: int | None = None
CASE = Path(__file__).resolve().parent.parent / "tests" / "data" / "realblur_case.npz"


# --- sampling ------------------------------------------------------------------------------------


def _positions(m: np.ndarray, h: int, w: int, subpixel: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (u, v) of every destination pixel under the inverse map ``m``."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    den = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    u = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / den
    v = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / den
    if subpixel:
        u = np.rint(u * subpixel) / subpixel
        v = np.rint(v * subpixel) / subpixel
    return u, v


def warp_nearest_mask(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """1.0 where the nearest source pixel (rounded half to even) lies inside an h x w image."""
    u, v = _positions(m, h, w, None)
    iu, iv = np.rint(u), np.rint(v)
    return ((iu >= 0) & (iu <= w - 1) & (iv >= 0) & (iv <= h - 1)).astype(np.float64)


def warp_bilinear_zero(img: np.ndarray, m: np.ndarray, subpixel: int | None = SUBPIXEL) -> np.ndarray:
    """Bilinear inverse-map warp of an H x W map; taps outside the image count as 0."""
    h, w = img.shape
    u, v = _positions(m, h, w, subpixel)
    x0, y0 = np.floor(u), np.floor(v)
    fx, fy = u - x0, v - y0
    out = np.zeros((h, w))
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = (x0 + dx).astype(np.int64), (y0 + dy).astype(np.int64)
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            vals = np.where(inside, img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0.0)
            out += wy * wx * vals
    return out


def _cubic_weights(f: np.ndarray) -> list[np.ndarray]:
    a = -0.75
    w0 = ((a * (f + 1) - 5 * a) * (f + 1) + 8 * a) * (f + 1) - 4 * a
    w1 = ((a + 2) * f - (a + 3)) * f * f + 1
    w2 = ((a + 2) * (1 - f) - (a + 3)) * (1 - f) * (1 - f) + 1
    return [w0, w1, w2, 1 - w0 - w1 - w2]


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """BORDER_REFLECT (fedcba|abcdef), for overshoots smaller than n."""
    i = np.where(i < 0, -i - 1, i)
    return np.where(i >= n, 2 * n - i - 1, i)


def warp_bicubic_reflect(img: np.ndarray, m: np.ndarray, subpixel: int | None = SUBPIXEL) -> np.ndarray:
    """Bicubic (a = -0.75) inverse-map warp of an H x W x C image with reflected borders."""
    h, w = img.shape[:2]
    u, v = _positions(m, h, w, subpixel)
    x0, y0 = np.floor(u), np.floor(v)
    wx, wy = _cubic_weights(u - x0), _cubic_weights(v - y0)
    out = np.zeros(img.shape)
    for j in range(4):
        yi = _reflect(y0.astype(np.int64) + j - 1, h)
        for i in range(4):
            xi = _reflect(x0.astype(np.int64) + i - 1, w)
            out += (wy[j] * wx[i])[:, :, None] * img[yi, xi]
    return out


# --- ECC -----------------------------------------------------------------------------------------


def _binomial5(img: np.ndarray) -> np.ndarray:
    """5 x 5 binomial blur [1 4 6 4 1] / 16 per axis, reflect-101 borders."""
    k = np.array([1, 4, 6, 4, 1]) / 16.0
    p = np.pad(img, 2, mode="reflect")
    h, w = img.shape
    rows = sum(k[i] * p[i : i + h, :] for i in range(5))
    return sum(k[i] * rows[:, i : i + w] for i in range(5))


def _central(img: np.ndarray, axis: int) -> np.ndarray:
    """0.5 (I[i+1] - I[i-1]) along ``axis``, reflect-101 borders."""
    p = np.pad(img, [(1, 1) if a == axis else (0, 0) for a in range(2)], mode="reflect")
    n = img.shape[axis]
    return 0.5 * (np.take(p, range(2, n + 2), axis=axis) - np.take(p, range(0, n), axis=axis))


def gray(img: np.ndarray) -> np.ndarray:
    return 0.299 * img[:, :, 0] + 0.587 * img[:, :, 1] + 0.114 * img[:, :, 2]


def ecc_homography(template: np.ndarray, image: np.ndarray, iterations: int = 100) -> np.ndarray:
    """The homography H (template coordinates -> image coordinates) maximising ECC, from identity."""
    t = _binomial5(template)
    im = _binomial5(image)
    gx, gy = _central(im, 1), _central(im, 0)
    h, w = t.shape
    ygrid, xgrid = np.mgrid[0:h, 0:w].astype(np.float64)
    m = np.eye(3)
    for _ in range(iterations):
        iw = warp_bilinear_zero(im, m)
        gxw, gyw = warp_bilinear_zero(gx, m), warp_bilinear_zero(gy, m)
        mask = warp_nearest_mask(m, h, w) > 0
        n = mask.sum()
        img_mean, tmp_mean = iw[mask].mean(), t[mask].mean()
        img_norm = math.sqrt(n * iw[mask].var())
        tmp_norm = math.sqrt(n * t[mask].var())
        iw = np.where(mask, iw - img_mean, iw)  # pixels outside the mask keep their warped value
        tzm = np.where(mask, t - tmp_mean, 0.0)
        den = m[2, 0] * xgrid + m[2, 1] * ygrid + 1.0
        hat_x = -(m[0, 0] * xgrid + m[0, 1] * ygrid + m[0, 2]) / den
        hat_y = -(m[1, 0] * xgrid + m[1, 1] * ygrid + m[1, 2]) / den
        ax, ay = gxw / den, gyw / den
        mix = hat_x * ax + hat_y * ay
        # Parameter order: m00, m10, m20, m01, m11, m21, m02, m12.
        jac = np.stack([ax * xgrid, ay * xgrid, mix * xgrid, ax * ygrid, ay * ygrid, mix * ygrid, ax, ay])
        jf = jac.reshape(8, -1)
        hess_inv = np.linalg.inv(jf @ jf.T)
        correlation = float(np.sum(tzm * iw))
        img_proj = jf @ iw.ravel()
        tmp_proj = jf @ tzm.ravel()
        ph = hess_inv @ img_proj
        lam = (img_norm**2 - img_proj @ ph) / (correlation - tmp_proj @ ph)
        err = lam * tzm - iw
        dp = hess_inv @ (jf @ err.ravel())
        m[0, 0] += dp[0]
        m[1, 0] += dp[1]
        m[2, 0] += dp[2]
        m[0, 1] += dp[3]
        m[1, 1] += dp[4]
        m[2, 1] += dp[5]
        m[0, 2] += dp[6]
        m[1, 2] += dp[7]
    return m


# --- scoring -------------------------------------------------------------------------------------


def _gauss_valid(img: np.ndarray) -> np.ndarray:
    t = np.arange(-5, 6, dtype=np.float64)
    k = np.exp(-(t**2) / (2 * 1.5**2))
    k /= k.sum()
    h, w = img.shape[0] - 10, img.shape[1] - 10
    rows = sum(k[i] * img[i : i + h] for i in range(11))
    return sum(k[i] * rows[:, i : i + w] for i in range(11))


def score_with_warp(restored: np.ndarray, target: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """RealBlur PSNR and SSIM of float [0, 1] H x W x 3 images, given the ECC homography ``m``."""
    z, x = restored, target
    zs = (np.sum(x * z) / np.sum(z * z)) * z
    h, w = x.shape[:2]
    cr = warp_nearest_mask(m, h, w)[:, :, None] * np.ones((1, 1, x.shape[2]))
    zr = warp_bicubic_reflect(zs, m) * cr
    xr = x * cr
    mse = np.sum((xr - zr) ** 2) / np.sum(cr)
    psnr = 10 * math.log10(1.0 / mse)
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for c in range(x.shape[2]):
        a, b = xr[:, :, c], zr[:, :, c]
        ma, mb = _gauss_valid(a), _gauss_valid(b)
        va, vb = _gauss_valid(a * a) - ma**2, _gauss_valid(b * b) - mb**2
        cov = _gauss_valid(a * b) - ma * mb
        smap = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        inner = cr[5:-5, 5:-5, c]
        per_channel.append(np.sum(smap * inner) / np.sum(inner))
    return psnr, float(np.mean(per_channel))


def reference_scores(restored: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(ECC homography, PSNR, SSIM) of the whole reference evaluation, in float64."""
    z = restored.astype(np.float64)
    x = target.astype(np.float64)
    zs = (np.sum(x * z) / np.sum(z * z)) * z
    m = ecc_homography(gray(x), gray(zs))
    psnr, ssim = score_with_warp(z, x, m)
    return m, psnr, ssim


# --- the frozen case -----------------------------------------------------------------------------


def texture(x: np.ndarray, y: np.ndarray, seed: int = 5) -> np.ndarray:
    """A smooth RGB texture around 0.5: twelve random plane waves per channel (periods >= 9 px)."""
    rng = np.random.default_rng(seed)
    out = np.full(x.shape + (3,), 0.5)
    for c in range(3):
        for _ in range(12):
            fx, fy = rng.uniform(-0.7, 0.7, 2)
            phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.04)
            out[..., c] += amp * np.sin(fx * x + fy * y + phase)
    return out


def make_case(h: int = 72, w: int = 96) -> dict[str, np.ndarray]:
    """Target = texture(p); restored(q) = 0.9 texture(G q) for a homography G; both 8-bit."""
    theta, scale = 0.02, 1.01
    g = np.array(
        [
            [scale * math.cos(theta), -scale * math.sin(theta), 1.3],
            [scale * math.sin(theta), scale * math.cos(theta), -0.8],
            [1e-5, -2e-5, 1.0],
        ]
    )
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    q = np.stack([x, y, np.ones_like(x)], -1) @ g.T
    target = texture(x, y)
    restored = 0.9 * texture(q[..., 0] / q[..., 2], q[..., 1] / q[..., 2])
    to8 = lambda a: np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    return {"target": to8(target), "restored": to8(restored), "homography": g}


def main() -> None:
    case = make_case()
    m, psnr, ssim = reference_scores(case["restored"] / 255.0, case["target"] / 255.0)
    truth = np.linalg.inv(case["homography"])
    print("ECC homography (float64):\n", m, "\ninverse of the known homography:\n", truth / truth[2, 2])
    print(f"PSNR {psnr:.6f} dB, SSIM {ssim:.6f}")
    CASE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(CASE, **case, warp=m, psnr=psnr, ssim=ssim)
    print("wrote", CASE)


if __name__ == "__main__":
    main()
