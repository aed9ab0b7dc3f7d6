"""Softmax-weighted context pooling over a local window (GCNet's context modelling made local).

GCNet (and MIRNet-v2's context block) pools a map by attention over all pixels::

    w = softmax(logits.flatten(2), dim=-1)          # (N, 1 or C, HW)
    context = (x.flatten(2) * w).sum(-1)            # (N, C)

Made local, every pixel gets the same pooling over the window around it (placed as in
:func:`tlc.local_mean`): ``sum_q exp(l_q) x_q / sum_q exp(l_q)`` over the window's pixels q.

Exactness. Both sums must be formed without overflow, and without the window's weights
underflowing: a single shift by the map's maximum logit underflows ``exp`` in every window whose
logits sit more than ~700 (float64) below it, and window sums taken as differences of prefix sums
lose all digits when the weights before the window dwarf those inside it. So:

- No window sum is a difference (one exception, the last point). Sums over windows are built by
  van Herk / Gil-Werman blocks (see :mod:`tlc.ops.axis`): a window is a suffix of one block plus a
  prefix of the next, both running sums of positive weights (numerator: weights times x), along
  W and then along H.
- Shared shift when it is safe. With ``c`` the map's maximum logit, the weights ``exp(l - c)``
  are at most 1 and a window's largest weight is ``exp(m_window - c)``. If every window's maximum
  is within ``R = log(eps / tiny)`` of ``c`` (672 in float64), each window's largest weight is a
  normal number and the weights that underflow are below ``eps`` relative to it: the sums are
  exact to the float64 rounding. This is checked on the data (global logit range first, then the
  windows' maxima, an O(HW) local max).
- Otherwise, every partial sum carries its own maximum. On the CPU without autograd a compiled
  kernel runs the same blocks with online-softmax triples (max, sum of weights, weighted sum),
  each relative to its own maximum: joining two rescales by factors <= 1, nothing overflows, and a
  sum holding its maximum's weight 1 never underflows. Elsewhere the block sums are taken in the
  log domain with ``torch.logcumsumexp`` / ``torch.logaddexp`` (differentiable, any device); the
  numerator's values are made positive first (``x - min(x) + 1`` per map, the shift added back
  at the end) so ``log`` applies, with a relative error of ~eps times the magnitude of the
  log-sums, i.e. ~1e-12 for logits of 1e4. This path is slow (tens of times the global op): it is
  for logits no single shift can hold, which trained networks rarely produce.
- One exception to the first point, for speed: with a shared shift, a float32 (or half) input on
  the CPU, and windows' weight sums that vary little over the map (their largest over their
  smallest within a bound set by the map and window sizes), the window sums are running sums
  with differences. Their error is then provably below 1e-10 of the largest ``|x|``, a thousandth
  of a float32 rounding step, at under half the block sums' time (:mod:`tlc.ops._running_kernels`
  has the bound).
"""

from __future__ import annotations

import math

import torch

from ._common import Pair, accumulation_dtype, as_pair, check_feature_map, tracing
from ._local_kernels import fused_softmax_pool, fused_softmax_pool_general, local_kernels_apply
from ._running_kernels import running_softmax_pool
from .axis import block_window_scan
from .extrema import local_max
from .pool import clamp_window, replicate_to


def _check_logits(x: torch.Tensor, logits: torch.Tensor) -> None:
    check_feature_map(x)
    check_feature_map(logits, "logits")
    n, c, h, w = x.shape
    if logits.shape[0] != n or logits.shape[-2:] != x.shape[-2:] or logits.shape[1] not in (1, c):
        raise ValueError(f"logits must have shape ({n}, 1 or {c}, {h}, {w}), got {tuple(logits.shape)}")


def _cumsum(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cumsum(t, dim)


def _block_sums(t: torch.Tensor, window: Pair) -> torch.Tensor:
    """Sums over every (kh, kw) window inside the map without differences (van Herk blocks)."""
    return block_window_scan(block_window_scan(t, window[1], -1, _cumsum, torch.add), window[0], -2, _cumsum, torch.add)


def _block_logsumexp(t: torch.Tensor, window: Pair) -> torch.Tensor:
    """Log-sum-exp over every (kh, kw) window inside the map (van Herk blocks, log domain)."""
    along_w = block_window_scan(t, window[1], -1, torch.logcumsumexp, torch.logaddexp)
    return block_window_scan(along_w, window[0], -2, torch.logcumsumexp, torch.logaddexp)


def _shared_shift_is_exact(logits: torch.Tensor, lowest: torch.Tensor, shift: torch.Tensor, window: Pair) -> bool:
    """Whether every window's largest weight ``exp(max - shift)`` keeps full precision (``lowest``:
    each map's smallest logit)."""
    reach = math.log(torch.finfo(logits.dtype).eps / torch.finfo(logits.dtype).tiny)
    if bool((lowest >= shift - reach).all()):
        return True
    window_max = local_max(logits, window)  # the valid windows' maxima, replicated
    return bool((window_max.amin(dim=(-2, -1), keepdim=True) >= shift - reach).all())


def local_softmax_pool(x: torch.Tensor, logits: torch.Tensor, window: int | Pair, valid_only: bool = False) -> torch.Tensor:
    """Softmax-weighted pooling of ``x`` over a local window around each pixel.

    At each pixel, with q running over the pixels of the window placed as in
    :func:`tlc.local_mean`: ``out = sum_q softmax(logits over the window)_q * x_q``. A window
    covering the map gives GCNet's global context ``(x.flatten(2) * softmax(logits.flatten(2),
    -1)).sum(-1)`` at every pixel. See the module docstring for how it stays exact: block sums
    with one shared shift when the logits allow it, otherwise partial sums relative to their own
    maxima (CPU kernel) or in the log domain (torch); float64 throughout (``accumulation_dtype``),
    no window sum taken as a difference.

    Args:
        x: (N, C, H, W) floating tensor: the values pooled.
        logits: (N, 1, H, W) (one attention map shared by the channels, as in GCNet) or
            (N, C, H, W) floating tensor: the attention logits, finite.
        window: (kh, kw) in pixels (an int means square), each clamped to the map.
        valid_only: return only the windows lying inside the map, (N, C, H - kh + 1, W - kw + 1),
            before the edge replication (``tlc.ops.pool.replicate_to`` completes them).

    Returns:
        (N, C, H, W) tensor, dtype of ``x``. Differentiable in ``x`` and ``logits``. Inputs holding
        NaN or inf are not supported (the result may be NaN beyond the windows holding them).
    """
    _check_logits(x, logits)
    h, w = x.shape[-2:]
    kh, kw = clamp_window(as_pair(window, "window"), (h, w))
    acc = accumulation_dtype(x)
    scores = logits.to(acc)
    if (kh, kw) == (h, w):  # the global formula, broadcast
        weights = torch.softmax(scores.flatten(2), dim=-1)
        context = (x.to(acc).flatten(2) * weights).sum(-1).to(x.dtype)[:, :, None, None]
        return context if valid_only else context.expand(x.shape).contiguous()
    # Each map's extremes taken on the logits as given (rounding to ``acc`` is monotonic: they
    # round to the scores' extremes), half the bytes of the float64 scores, and the weights
    # exponentiated in place: 1.17 -> 0.90 ms at 720 x 1280. (torch.aminmax over a dim took
    # 1.39 ms alone: its reduction over one long dim is slow.)
    detached = logits.detach()
    shift = detached.amax(dim=(-2, -1), keepdim=True).to(acc)
    lowest = detached.amin(dim=(-2, -1), keepdim=True).to(acc)
    if not tracing() and _shared_shift_is_exact(scores.detach(), lowest, shift, (kh, kw)):
        weights = torch.sub(scores, shift).exp_()
        if local_kernels_apply(x, logits):
            if x.dtype != torch.float64:
                pooled = running_softmax_pool(x, weights, (kh, kw), valid_only)
                if pooled is not None:
                    return pooled
            return fused_softmax_pool(x, weights, (kh, kw), valid_only)
        values = x.to(acc)
        valid = _block_sums(weights * values, (kh, kw)) / _block_sums(weights, (kh, kw))
    elif local_kernels_apply(x, logits):
        return fused_softmax_pool_general(x, scores, (kh, kw), valid_only)
    else:
        values = x.to(acc)
        # Positive values for the log; the per-map offset (a convex combination's shift) is added
        # back after pooling.
        offset = values.detach().amin(dim=(-2, -1), keepdim=True) - 1
        log_num = _block_logsumexp(scores + torch.log(values - offset), (kh, kw))
        log_den = _block_logsumexp(scores, (kh, kw))
        valid = torch.exp(log_num - log_den) + offset
    return valid.to(x.dtype) if valid_only else replicate_to(valid.to(x.dtype), (h, w))
