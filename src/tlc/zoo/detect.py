"""Architecture detection: which network, with which constructor config, a state_dict was saved
from, from its keys and shapes alone.

    arch, config = detect(sd)                              # ("NAFNet", {"width": 64, ...})
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping

import torch

from .._util import Hint, hinted
from ..archs import ARCHITECTURES
from .checkpoints import CheckpointError, Shapes, describe_call, listing, model_shapes, shape_differences, state_shapes

#: Constructor arguments that do not shape any weight, so detect() cannot see them; they keep their
#: defaults unless given to load_model.
NOT_IN_WEIGHTS = {"HINet": ("relu_slope", "padder_size", "padding_mode"), "MPRNet": ("padder_size",), "UNet": ("padding_mode",)}


def detect(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
    """The architecture name (a key of :data:`tlc.archs.ARCHITECTURES`) and constructor config
    (the reference's keyword names) that ``state_dict`` was saved from, from keys and shapes alone.

    Works on meta tensors too. The result is checked: building it gives exactly the same keys and
    shapes, or CheckpointError says what differs. Arguments that shape no weight
    (:data:`NOT_IN_WEIGHTS`) are left out and keep their defaults.
    """
    shapes = state_shapes(state_dict)
    for arch, recognise, infer in _DETECTORS:
        if recognise(shapes):
            try:
                config = infer(shapes)
            except (KeyError, IndexError, ZeroDivisionError) as e:
                raise CheckpointError(f"this looks like a {arch} state_dict but lacks what it needs ({e})") from None
            problems = shape_differences(shapes, model_shapes(arch, config))
            if problems:
                raise CheckpointError(
                    f"this looks like a {arch} state_dict, but no {arch} config reproduces it; the closest, "
                    f"{describe_call(arch, config)}, differs:\n{problems}"
                )
            return arch, config
    raise _unrecognised(shapes)


def _count(shapes: Shapes, prefix: str) -> int:
    """How many numbered children ``prefix.0``, ``prefix.1``... hold keys (highest index + 1)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = [int(m.group(1)) for k in shapes if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def _default(arch: str, name: str) -> object:
    return inspect.signature(ARCHITECTURES[arch].__init__).parameters[name].default


def _unet_of_blocks(shapes: Shapes) -> dict:
    """NAFNet / Baseline: width and image channels from ``intro``, block counts from the indices."""
    return {
        "img_channel": shapes["intro.weight"][1],
        "width": shapes["intro.weight"][0],
        "middle_blk_num": _count(shapes, "middle_blks"),
        "enc_blk_nums": [_count(shapes, f"encoders.{i}") for i in range(_count(shapes, "downs"))],
        "dec_blk_nums": [_count(shapes, f"decoders.{i}") for i in range(_count(shapes, "ups"))],
    }


def _baseline(shapes: Shapes) -> dict:
    # Any block tells the expansions: conv1 is c -> c*dw_expand, conv4 is c -> c*ffn_expand.
    block = next(k[: -len(".se.1.weight")] for k in shapes if k.endswith(".se.1.weight"))
    channels = shapes[f"{block}.conv1.weight"][1]
    return {
        **_unet_of_blocks(shapes),
        "dw_expand": shapes[f"{block}.conv1.weight"][0] // channels,
        "ffn_expand": shapes[f"{block}.conv4.weight"][0] // channels,
    }


def _hinet(shapes: Shapes) -> dict:
    """Width from ``conv_01``, depth from the encoder levels, HIN range from the levels with norms."""
    depth = _count(shapes, "down_path_1")
    with_norm = [i for i in range(depth) if f"down_path_1.{i}.norm.weight" in shapes]
    if with_norm and with_norm != list(range(with_norm[0], with_norm[-1] + 1)):
        raise CheckpointError(f"HINet with instance norm in levels {with_norm}: not one range, so not buildable")
    left, right = (with_norm[0], with_norm[-1]) if with_norm else (0, -1)  # (0, -1): no level
    return {
        "in_chn": shapes["conv_01.weight"][1],
        "wf": shapes["conv_01.weight"][0],
        "depth": depth,
        "hin_position_left": left,
        "hin_position_right": right,
    }


def _mprnet(shapes: Shapes) -> dict:
    """Widths from the first conv, the level-2 encoder and the tail; num_cab from ORB 1's length
    (its CABs, then one conv); reduction from the channel-attention squeeze sizes."""
    first = shapes["shallow_feat1.0.weight"]
    n_feat = first[0]
    squeezes = [(s[1], s[0]) for k, s in shapes.items() if k.endswith("CA.conv_du.0.weight")]
    return {
        "in_c": first[1],
        "out_c": shapes["tail.weight"][0],
        "n_feat": n_feat,
        "scale_unetfeats": shapes["stage1_encoder.encoder_level2.0.body.0.weight"][0] - n_feat,
        "scale_orsnetfeats": shapes["tail.weight"][1] - n_feat,
        "num_cab": _count(shapes, "stage3_orsnet.orb1.body") - 1,
        "kernel_size": first[-1],
        "reduction": _reduction(squeezes, _default("MPRNet", "reduction")),
        "bias": "shallow_feat1.0.bias" in shapes,
    }


def _reduction(squeezes: list[tuple[int, int]], preferred: int) -> int:
    """A ``reduction`` r with ``channels // r == squeezed`` for every (channels, squeezed) pair."""
    candidates = [preferred, *range(1, max(c for c, _ in squeezes) + 1)]
    for r in candidates:
        if all(c // r == s for c, s in squeezes):
            return r
    raise CheckpointError(f"MPRNet channel-attention sizes {sorted(set(squeezes))} fit no single reduction")


def _restormer(shapes: Shapes) -> dict:
    """Channels from ``patch_embed``/``output``, block counts from the indices, heads from the
    attention temperatures (num_heads, 1, 1), norm type and bias from which biases exist."""
    embed = shapes["patch_embed.proj.weight"]
    levels = (("encoder_level1", "decoder_level1", "refinement"), ("encoder_level2", "decoder_level2"),
              ("encoder_level3", "decoder_level3"), ("latent",))
    default_heads = _default("Restormer", "heads")
    heads = []
    for level, default in zip(levels, default_heads):
        found = [shapes[f"{g}.0.attn.temperature"][0] for g in level if f"{g}.0.attn.temperature" in shapes]
        heads.append(found[0] if found else default)  # a level without blocks has no heads to see
    has_blocks = any(k.endswith(".norm1.body.weight") for k in shapes)
    with_bias = any(k.endswith(".norm1.body.bias") for k in shapes)
    hidden = [(s[0], s[1]) for k, s in shapes.items() if k.endswith(".ffn.project_out.weight")]
    return {
        "inp_channels": embed[1],
        "out_channels": shapes["output.weight"][0],
        "dim": embed[0],
        "num_blocks": [_count(shapes, g) for g in ("encoder_level1", "encoder_level2", "encoder_level3", "latent")],
        "num_refinement_blocks": _count(shapes, "refinement"),
        "heads": heads,
        "ffn_expansion_factor": _ffn_factor(hidden, _default("Restormer", "ffn_expansion_factor")),
        "bias": "output.bias" in shapes,
        "LayerNorm_type": "WithBias" if with_bias or not has_blocks else "BiasFree",
        "dual_pixel_task": "skip_conv.weight" in shapes,
    }


def _ffn_factor(hidden: list[tuple[int, int]], preferred: float) -> float:
    """A factor v with ``int(dim * v) == hidden`` for every (dim, hidden) pair, as the constructor
    computes it: ``preferred`` when it fits, else the shortest decimal that does."""

    def fits(v: float) -> bool:
        return all(int(dim * v) == h for dim, h in hidden)

    if not hidden or fits(preferred):
        return preferred
    low = max(h / dim for dim, h in hidden)  # every fitting v lies in [low, high)
    for decimals in range(7):
        step = 10.0**-decimals
        start = math.floor(low / step) * step
        for v in (round(start + i * step, decimals) for i in range(3)):
            if fits(v):
                return v
    raise CheckpointError(f"Restormer feed-forward sizes {sorted(set(hidden))} fit no ffn_expansion_factor")


def _is_baseline(shapes: Shapes) -> bool:
    return "intro.weight" in shapes and any(k.endswith(".se.1.weight") for k in shapes)


#: (architecture, how to recognise its state_dicts, config inference), tried in order.
_DETECTORS: tuple[tuple[str, Callable[[Shapes], bool], Callable[[Shapes], dict]], ...] = (
    ("Baseline", _is_baseline, _baseline),
    ("NAFNet", lambda shapes: "intro.weight" in shapes, _unet_of_blocks),  # also the block-less Baseline
    ("HINet", lambda shapes: "conv_01.weight" in shapes, _hinet),
    ("MPRNet", lambda shapes: "shallow_feat1.0.weight" in shapes, _mprnet),
    ("Restormer", lambda shapes: "patch_embed.proj.weight" in shapes, _restormer),
)


def _unrecognised(shapes: Shapes) -> CheckpointError:
    prefixes = list(dict.fromkeys(k.split(".")[0] for k in shapes))
    examples = ", ".join(f"{k} {s}" for k, s in list(shapes.items())[:4])
    return hinted(CheckpointError, Hint(
        "load_model", "arch=NAME with its config",
        f"not a state_dict of a known architecture ({', '.join(ARCHITECTURES)}): {len(shapes)} tensors under "
        f"{listing(prefixes)}; e.g. {examples}. If it is one of them, pass ", "."))
