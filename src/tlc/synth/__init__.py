"""Synthetic degradations: paired (sharp, blurred + noisy) data from sharp photographs.

The engine behind ``tlc synth``: pure functions on H x W x C float images in [0, 1] (numpy), a
frozen :class:`Degradation` describing what to draw, and a JSON-able record of what was drawn. The
same image, :class:`Degradation` and seed give a bit-identical output on the same platform and
library versions (the record names the numpy and torch versions).

Model (applied in this order):

1. Motion blur by a line kernel (:func:`motion_kernel`) of one angle per image and a length that
   is uniform or varies over the frame (:func:`level_map`), optionally in linear light
   (``blur_gamma``). A varying length is rendered by blending a bank of uniformly blurred images
   (:func:`motion_blur`).
2. Additive Gaussian noise of a per-pixel standard deviation ``sigma`` (0..255 scale), uniform or
   varying over the frame, optionally signal-dependent: the variance at a pixel of clean (blurred)
   value ``s`` in [0, 1] is ``(sigma / 255)^2 * ((1 - f) + f * s)`` with ``f = noise_shot_fraction``
   (a Gaussian stand-in for Poisson-Gaussian sensor noise; ``sigma`` is the std at white). Noise is
   independent per pixel and channel.
3. Clipping to [0, 1], as any stored image is: noise on near-black or near-white pixels is
   truncated (and biased there); the record's ``noise.clipped_fraction`` says how much.

Patterns (:func:`level_map`), each a map between ``low`` and ``high``. Angles are in degrees,
counterclockwise from the +x axis (left to right) as the image is displayed, so 90 points up:

- ``uniform``: one constant drawn uniformly from [low, high] (exactly ``low`` when equal).
- ``ramp``: linear in the coordinate ``u`` along the angle, ``low`` at the pixel centre with the
  smallest ``u`` and ``high`` at the largest (angle 0: low at the left column, high at the right).
- ``step``: ``high`` where ``u > 0`` (u measured from the image centre), ``low`` elsewhere; the
  boundary passes through the centre perpendicular to the angle (angle 0: left half low, right
  half high; a centre column of an odd width is low).
- ``blobs``: a sum of 3 to 6 isotropic Gaussians, with centres uniform over the frame grown by
  10% of its longer side on every side, standard deviations uniform in [0.1, 0.3] of the longer
  side and amplitudes uniform in [-1, 1], min-max rescaled to span [low, high]. Defined in units
  of the longer side, so one seed gives the same layout at any resolution of one aspect ratio.

A ramp or step with no angle given takes one uniform in [0, 360). A map that cannot vary (a ramp
along an axis of one pixel) is ``low`` everywhere.
"""

from .blur import motion_blur, motion_blur_field, motion_kernel
from .checks import PATTERNS, Pattern
from .degrade import (
    RECORD_FORMAT,
    Degradation,
    DegradationMaps,
    add_noise,
    degrade,
    degrade_from_record,
    draw_maps,
)
from .fields import level_map, motion_field
from .pairs import SynthReport, write_pairs

__all__ = [
    "PATTERNS",
    "RECORD_FORMAT",
    "Degradation",
    "DegradationMaps",
    "Pattern",
    "SynthReport",
    "add_noise",
    "degrade",
    "degrade_from_record",
    "draw_maps",
    "level_map",
    "motion_blur",
    "motion_blur_field",
    "motion_field",
    "motion_kernel",
    "write_pairs",
]
