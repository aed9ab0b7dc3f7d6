"""``tlc.metrics.psnr`` / ``ssim`` and the protocols, as the README calls them; they live in
:mod:`tlc.eval.metrics`."""

from .eval.metrics import DEFAULT_PROTOCOL, PROTOCOLS, Protocol, align_to_target, psnr, ssim, to_uint8

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "Protocol", "align_to_target", "psnr", "ssim", "to_uint8"]
