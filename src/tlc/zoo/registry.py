"""The registry of released checkpoints: one literal list of :class:`ModelEntry`.

Each entry says how to build the network, where its weights live inside the checkpoint file,
the crop size it was trained on, the TLC setting of the paper, published results, its licence,
the authors' page and the addresses its weights file is downloaded from on first use (tried in
order; :mod:`tlc.zoo.download` fetches, checks and caches it)::

    for entry in tlc.models.list():
        print(entry.name, entry.licence)
    model = tlc.load_model("nafnet-gopro-width64")            # downloaded once, then cached
    model = tlc.load_model("nafnet-gopro-width64", weights="NAFNet-GoPro-width64.pth")  # a file at hand

The download addresses are the authors' own: Google Drive files linked from the NAFNet, HINet and
MPRNet READMEs, Restormer's GitHub release assets. No SHA-256 is pinned yet (``sha256=None``): a
download is accepted when it loads safely and fits the entry's network exactly.

Restormer and MPRNet weights are released for non-commercial research use only.
"""

from __future__ import annotations

import builtins
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from .._util import Pair


#: The benchmark (``tlc eval --benchmark``) each published dataset name is scored on.
BENCHMARK_OF_DATASET = {"GoPro": "gopro", "HIDE": "hide", "REDS": "reds-300", "SIDD": "sidd", "DPDD": "dpdd",
                        "RealBlur-J": "realblur-j", "RealBlur-R": "realblur-r"}


@dataclass(frozen=True)
class Result:
    """A published score: PSNR in dB and SSIM on ``dataset``, with or without TLC.

    ``benchmark`` is the name ``tlc eval --benchmark`` takes for the test set and protocol the
    number was measured on (default: from :data:`BENCHMARK_OF_DATASET`; REDS numbers are on the
    300-frame validation subset, "reds-300").
    """

    dataset: str
    psnr: float
    ssim: float | None = None
    tlc: bool = False
    source: str = ""
    benchmark: str = ""

    def __post_init__(self) -> None:
        if not self.benchmark:
            object.__setattr__(self, "benchmark", BENCHMARK_OF_DATASET.get(self.dataset, self.dataset.lower()))


@dataclass(frozen=True)
class ModelEntry:
    """One released checkpoint.

    Attributes:
        name: registry name, e.g. ``nafnet-gopro-width64``.
        arch: architecture name for :func:`tlc.archs.build`.
        config: constructor keywords (the reference's names).
        task: what it restores.
        checkpoint_key: where the file keeps the state_dict (``params``, ``state_dict``...).
        train_size: (H, W) of the training crops, in pixels: the TLC ``train_size``.
        base_size: (H, W) of the paper's TLC window, or None where the paper does not use TLC.
        results: published scores.
        licence: the weights' licence.
        url: the authors' page for the weights (for people; ``sources`` are what tlc downloads).
        non_commercial: the licence forbids commercial use.
        weights_file: for models bundled with tlc, the file name in ``tlc/weights/``.
        sources: addresses of the weights file, tried in order by :mod:`tlc.zoo.download`
            (Google Drive ones as :func:`google_drive` writes them).
        sha256: the file's SHA-256 (lowercase hex) where known; a download must match it.
    """

    name: str
    arch: str
    config: dict = field(hash=False)
    task: str
    checkpoint_key: str
    train_size: Pair
    base_size: Pair | None
    results: tuple[Result, ...]
    licence: str
    url: str
    non_commercial: bool = False
    weights_file: str | None = None
    sources: tuple[str, ...] = ()
    sha256: str | None = None

    @property
    def bundled_weights(self) -> Path | None:
        """Path of the bundled weights file, or None for released checkpoints users download."""
        return Path(__file__).resolve().parent.parent / "weights" / self.weights_file if self.weights_file else None

    def __str__(self) -> str:
        note = " (non-commercial use only)" if self.non_commercial else ""
        return f"{self.name}: {self.arch} for {self.task}, licence {self.licence}{note}"


NAFNET_URL = "https://github.com/megvii-research/NAFNet#results-and-pre-trained-models"
HINET_URL = "https://github.com/megvii-model/HINet"
MPRNET_URL = "https://github.com/swz30/MPRNet (Deblurring/pretrained_models)"
RESTORMER_URL = "https://github.com/swz30/Restormer/releases/download/v1.0/"
NON_COMMERCIAL = "non-commercial research use only (authors' academic licence)"

#: Google Drive's direct-download address; a file id follows (large files answer with a page to
#: confirm first, which :mod:`tlc.zoo.download` follows).
GOOGLE_DRIVE = "https://drive.google.com/uc?export=download&id="


def google_drive(file_id: str) -> tuple[str, ...]:
    """The download address of the Google Drive file ``file_id``, as a one-element ``sources``."""
    return (GOOGLE_DRIVE + file_id,)


_NAFNET_GOPRO = {"enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}
_NAFNET_SIDD = {"enc_blk_nums": [2, 2, 4, 8], "middle_blk_num": 12, "dec_blk_nums": [2, 2, 2, 2]}
_TLC_PAPER = "Chu et al. 2022 (TLC)"
_NAFNET_ZOO = "NAFNet model zoo"

#: Every released checkpoint tlc knows, in one list.
REGISTRY: tuple[ModelEntry, ...] = (
    ModelEntry(
        "nafnet-gopro-width32", "NAFNet", {"width": 32, **_NAFNET_GOPRO}, "motion deblurring", "params",
        (256, 256), (384, 384), (Result("GoPro", 32.8705, 0.9606, tlc=True, source=_NAFNET_ZOO),),
        "MIT", NAFNET_URL,
        sources=google_drive("1Fr2QadtDCEXg6iwWX8OzeZLbHOx2t5Bj"),
    ),
    ModelEntry(
        "nafnet-gopro-width64", "NAFNet", {"width": 64, **_NAFNET_GOPRO}, "motion deblurring", "params",
        (256, 256), (384, 384),
        (
            Result("GoPro", 33.08, tlc=False, source="Chen et al. 2022 (NAFNet), without TLC"),
            Result("GoPro", 33.7103, 0.9668, tlc=True, source=_NAFNET_ZOO),
        ),
        "MIT", NAFNET_URL,
        sources=google_drive("1S0PVRbyTakYY9a82kujgZLbMihfNBLfC"),
    ),
    ModelEntry(
        "nafnet-reds-width64", "NAFNet", {"width": 64, **_NAFNET_GOPRO}, "deblurring with JPEG artifacts (REDS)",
        "params", (256, 256), (384, 384), (Result("REDS", 29.0903, 0.8671, tlc=True, source=_NAFNET_ZOO),),
        "MIT", NAFNET_URL,
        sources=google_drive("14D4V4raNYIOhETfcuuLI3bGLB-OYIv6X"),
    ),
    ModelEntry(
        "nafnet-sidd-width32", "NAFNet", {"width": 32, **_NAFNET_SIDD}, "real denoising", "params",
        (256, 256), None, (Result("SIDD", 39.9672, 0.9599, source=_NAFNET_ZOO),), "MIT", NAFNET_URL,
        sources=google_drive("1lsByk21Xw-6aW7epCwOQxvm6HYCQZPHZ"),
    ),
    ModelEntry(
        "nafnet-sidd-width64", "NAFNet", {"width": 64, **_NAFNET_SIDD}, "real denoising", "params",
        (256, 256), None, (Result("SIDD", 40.3045, 0.9614, source=_NAFNET_ZOO),), "MIT", NAFNET_URL,
        sources=google_drive("14Fht1QQJ2gMlk4N1ERCRuElg8JfjrWWR"),
    ),
    ModelEntry(
        "baseline-gopro-width32", "Baseline", {"width": 32, **_NAFNET_GOPRO, "dw_expand": 1, "ffn_expand": 2},
        "motion deblurring", "params", (256, 256), (384, 384), (), "MIT", NAFNET_URL,
        sources=google_drive("14z7CxRzVkYEhFgsZg79GlPTEr3VFIGyl"),
    ),
    ModelEntry(
        "baseline-gopro-width64", "Baseline", {"width": 64, **_NAFNET_GOPRO, "dw_expand": 2, "ffn_expand": 2},
        "motion deblurring", "params", (256, 256), (384, 384), (), "MIT", NAFNET_URL,
        sources=google_drive("1yy0oPNJjJxfaEmO0pfPW_TpeoCotYkuO"),
    ),
    ModelEntry(
        "baseline-sidd-width32", "Baseline", {"width": 32, **_NAFNET_SIDD, "dw_expand": 1, "ffn_expand": 2},
        "real denoising", "params", (256, 256), None, (), "MIT", NAFNET_URL,
        sources=google_drive("1NhqVcqkDcYvYgF_P4BOOfo9tuTcKDuhW"),
    ),
    ModelEntry(
        "baseline-sidd-width64", "Baseline", {"width": 64, **_NAFNET_SIDD, "dw_expand": 2, "ffn_expand": 2},
        "real denoising", "params", (256, 256), None, (), "MIT", NAFNET_URL,
        sources=google_drive("1wQ1HHHPhSp70_ledMBZhDhIGjZQs16wO"),
    ),
    ModelEntry(
        "hinet-gopro", "HINet", {"wf": 64, "hin_position_left": 3, "hin_position_right": 4}, "motion deblurring",
        "params", (256, 256), (384, 384),
        (
            Result("GoPro", 32.71, 0.959, tlc=False, source="Chen et al. 2021 (HINet)"),
            Result("GoPro", 33.08, tlc=True, source=_TLC_PAPER),
        ),
        "MIT", HINET_URL,
        sources=google_drive("1dw8PKVkLfISzNtUu3gqGh83NBO83ZQ5n"),
    ),
    ModelEntry(
        "hinet-reds", "HINet", {"wf": 64, "hin_position_left": 3, "hin_position_right": 4},
        "deblurring with JPEG artifacts (REDS)", "params", (256, 256), (384, 384),
        (Result("REDS", 28.83, 0.862, tlc=False, source="Chen et al. 2021 (HINet)"),), "MIT", HINET_URL,
        sources=google_drive("1uYH8XvLgrn-Vg6L0NjUcO2Fblhqrc8TU"),
    ),
    ModelEntry(
        "mprnet-gopro", "MPRNet", {}, "motion deblurring", "state_dict", (256, 256), (384, 384),
        (
            Result("GoPro", 32.66, 0.959, tlc=False, source="Zamir et al. 2021 (MPRNet)"),
            Result("HIDE", 30.96, 0.939, tlc=False, source="Zamir et al. 2021 (MPRNet)"),
            Result("GoPro", 33.31, tlc=True, source=_TLC_PAPER),
        ),
        NON_COMMERCIAL, MPRNET_URL, non_commercial=True,
        sources=google_drive("1QwQUVbk6YVOJViCsOKYNykCsdJSVGRtb"),
    ),
    ModelEntry(
        "restormer-gopro", "Restormer", {}, "motion deblurring", "params", (256, 256), (384, 384),
        (
            Result("GoPro", 32.92, 0.961, tlc=False, source="Zamir et al. 2022 (Restormer)"),
            Result("HIDE", 31.22, 0.942, tlc=False, source="Zamir et al. 2022 (Restormer)"),
            Result("GoPro", 33.57, tlc=True, source=_TLC_PAPER),
        ),
        NON_COMMERCIAL, RESTORMER_URL + "motion_deblurring.pth", non_commercial=True,
        sources=(RESTORMER_URL + "motion_deblurring.pth",),
    ),
    ModelEntry(
        "restormer-dpdd-single", "Restormer", {}, "single-image defocus deblurring", "params", (256, 256), None,
        (Result("DPDD", 25.98, 0.811, source="Zamir et al. 2022 (Restormer)"),),
        NON_COMMERCIAL, RESTORMER_URL + "single_image_defocus_deblurring.pth", non_commercial=True,
        sources=(RESTORMER_URL + "single_image_defocus_deblurring.pth",),
    ),
    ModelEntry(
        "restormer-dpdd-dual", "Restormer", {"inp_channels": 6, "dual_pixel_task": True},
        "dual-pixel defocus deblurring", "params", (256, 256), None,
        (Result("DPDD", 26.66, 0.833, source="Zamir et al. 2022 (Restormer)", benchmark="dpdd-dual"),),
        NON_COMMERCIAL, RESTORMER_URL + "dual_pixel_defocus_deblurring.pth", non_commercial=True,
        sources=(RESTORMER_URL + "dual_pixel_defocus_deblurring.pth",),
    ),
    ModelEntry(
        "restormer-sidd", "Restormer", {"LayerNorm_type": "BiasFree"}, "real denoising", "params", (256, 256), None,
        (Result("SIDD", 40.02, 0.960, source="Zamir et al. 2022 (Restormer)"),),
        NON_COMMERCIAL, RESTORMER_URL + "real_denoising.pth", non_commercial=True,
        sources=(RESTORMER_URL + "real_denoising.pth", *google_drive("1FF_4NTboTWQ7sHCq4xhyLZsSl0U0JfjH")),
    ),
)


BUNDLED_URL = "bundled with tlc (trained by bench/train_tiny.py; model card beside the weights)"
_TINY_TASK = "blind Gaussian denoising (sigma 0-50), trained here on 48x48 crops of scikit-image photographs"
_TINY_DEBLUR_TASK = ("motion deblurring (motion up to 20 px, length and direction varying across the frame, "
                     "mild noise), trained here on 48x48 crops of scikit-image photographs")


def _tiny(name: str, arch: str, config: dict, task: str = _TINY_TASK) -> ModelEntry:
    return ModelEntry(name, arch, config, task, "params", (48, 48), (72, 72), (), "MIT", BUNDLED_URL,
                      weights_file=f"{name}.safetensors")


#: Small models trained here for the paper's study and the demo; their weights ship with tlc.
BUNDLED: tuple[ModelEntry, ...] = (
    _tiny("tiny-unet", "UNet", {"width": 16, "depth": 3, "blocks": 2, "norm": "none", "attention": "none"}),
    _tiny("tiny-unet-in", "UNet", {"width": 16, "depth": 3, "blocks": 2, "norm": "instance", "attention": "none",
                                   "padding_mode": "reflect"}),
    _tiny("tiny-unet-se", "UNet", {"width": 16, "depth": 3, "blocks": 2, "norm": "none", "attention": "se"}),
    _tiny("tiny-nafnet", "NAFNet", {"width": 16, "enc_blk_nums": [1, 1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1]}),
    _tiny("tiny-hinet", "HINet", {"wf": 16, "depth": 3, "hin_position_left": 0, "hin_position_right": 2, "padder_size": 4,
                                 "padding_mode": "reflect"}),
    _tiny("tiny-nafnet-deblur", "NAFNet", {"width": 16, "enc_blk_nums": [1, 1, 1], "middle_blk_num": 1,
                                           "dec_blk_nums": [1, 1, 1]}, _TINY_DEBLUR_TASK),
    _tiny("tiny-unet-in-deblur", "UNet", {"width": 16, "depth": 3, "blocks": 2, "norm": "instance", "attention": "none",
                                          "padding_mode": "reflect"}, _TINY_DEBLUR_TASK),
)
REGISTRY = REGISTRY + BUNDLED


def list() -> builtins.list[ModelEntry]:  # noqa: A001 (tlc.models.list, as the README calls it)
    """Every registry entry, in registry order."""
    return builtins.list(REGISTRY)


def get(name: str) -> ModelEntry:
    """The entry called ``name`` (case-insensitive); KeyError with close matches otherwise."""
    for entry in REGISTRY:
        if entry.name == name.lower():
            return entry
    close = difflib.get_close_matches(name.lower(), [e.name for e in REGISTRY], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(e.name for e in REGISTRY)}"
    raise KeyError(f"no model called {name!r} in the registry{hint}")
