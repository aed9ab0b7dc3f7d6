"""Image files in and out, the RGB model boundary, and input/pair discovery for ``tlc restore``/``eval``;
video files in and out in :mod:`tlc.io.video` (PyAV/FFmpeg: frames as RGB, timing and audio kept).

Decoding and encoding are OpenCV's (``opencv-python-headless``: libpng, libjpeg-turbo, libtiff and
libwebp, with 16-bit PNG and TIFF kept whole, which Pillow cannot do for RGB). Around it this module
adds what OpenCV leaves out, so that a bad file is an :class:`ImageError` with a one-line message
naming it, never a ``None``, a library traceback or a silently wrong image:

- The format is sniffed from the first bytes (not the suffix) and the header is parsed here, so
  the pixel limit (:data:`DEFAULT_MAX_PIXELS`, against decompression bombs) is checked before
  anything is decoded, and layouts OpenCV would misread (float, signed or 12-bit samples,
  gray+alpha, CMYK or 16-bit planar TIFF) are refused by name.
- Truncation is detected structurally, because libjpeg only warns and fills the rest with grey
  (OpenCV returns that image from ``imread``): a PNG must reach its IEND chunk, a JPEG its
  end-of-image marker (marker segments and entropy-coded scans are walked, so the marker of an
  EXIF thumbnail does not count), a TIFF's strips or tiles must lie inside the file, a WebP must
  be as long as its RIFF header says and an uncompressed BMP as long as its rows need. libpng,
  libtiff and libwebp fail on short data as well.
- TIFF alpha keeps its stored values: straight (unassociated) alpha is handed to libtiff tagged
  as associated, because its RGBA interface, which OpenCV uses for 8-bit samples, would otherwise
  premultiply the colour; truly associated alpha is divided out, so ``pixels`` is always straight.

Pixels are float32 in [0, 1]: ``uint8 / 255`` or ``uint16 / 65535``; writing rounds
``clamp(x, 0, 1) * 255`` (or 65535) half to even, so 8 and 16-bit PNG/TIFF round trips are exact.
Channels are RGB order throughout (OpenCV's BGR is swapped at the boundary). JPEG EXIF orientation
is applied, as viewers show the photo; other formats are returned as stored.
"""
from .headers import sniff
from .image import Image, ImageError, Mode, from_model_output, to_model_input
from .pairs import IMAGE_SUFFIXES, LAYOUTS, PairedSet, collect_inputs, find_pairs, images_by_stem
from .read import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, read_image
from .video import (
    VIDEO_SUFFIXES,
    AudioInfo,
    Frame,
    VideoEncoding,
    VideoError,
    VideoInfo,
    VideoWriter,
    frame_to_tensor,
    is_video_file,
    probe_video,
    read_frames,
    tensor_to_frame,
    video_encoding,
)
from .write import write_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "MAX_PIXELS_ENV",
    "VIDEO_SUFFIXES",
    "AudioInfo",
    "Frame",
    "Image",
    "ImageError",
    "Mode",
    "PairedSet",
    "VideoEncoding",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "collect_inputs",
    "find_pairs",
    "frame_to_tensor",
    "from_model_output",
    "images_by_stem",
    "is_video_file",
    "probe_video",
    "read_frames",
    "read_image",
    "sniff",
    "tensor_to_frame",
    "to_model_input",
    "video_encoding",
    "write_image",
]
