"""A corpus of small restoration architectures and what ``tlc.convert`` must do with each.

Every model is written here from the published description of a real network (the paper and
repository are named in its class docstring); channels 8-16 (up to 32 at the lowest level), 2-5
blocks, (N, 3, H, W) in and out (FBCNN also returns its quality factor), any size that is a
multiple of 4 (odd sizes too for rcan, nafnet, imdn, mirnet-skff, dat and unet), except the
whole-map layer norm, built for the training size as such models are.

:data:`CORPUS` lists one :class:`Entry` per model with the outcome the converter must reach for
every global op, written from what the project demands (not from what tlc does today): each
:class:`Expected` site is a module path and whether the op there is made ``"local"`` or left global
and ``"reported"``. A path names that module and everything below it (so an op converted as a
whole block or as the pooling inside it both match) unless ``exact`` is set: then only that
module itself (for ops its own ``forward`` computes next to children holding other global ops).
``kind`` says what the op is, for tables and documentation; sites are compared on path and status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import channel_attention as ca
from . import other, transformers


@dataclass(frozen=True)
class Expected:
    """One global op of a corpus model and what the converter must do with it.

    Attributes:
        path: qualified module name; matches that module and its descendants unless ``exact``.
        kind: what the op is ("avg-pool", "max-pool", "strip-mean", "instance-norm", ...).
        status: "local" (made local) or "reported" (left global, listed with the reason).
        exact: match ``path`` itself only.
    """

    path: str
    kind: str
    status: str
    exact: bool = False

    def __post_init__(self) -> None:
        if self.status not in ("local", "reported"):
            raise ValueError(f"status must be 'local' or 'reported', not {self.status!r}")

    def matches(self, path: str) -> bool:
        """Whether an observed site at module ``path`` is this one."""
        return path == self.path or (not self.exact and path.startswith(self.path + "."))


def local(path: str, kind: str, exact: bool = False) -> Expected:
    return Expected(path, kind, "local", exact)


def reported(path: str, kind: str, exact: bool = False) -> Expected:
    return Expected(path, kind, "reported", exact)


@dataclass(frozen=True)
class Entry:
    """One corpus model.

    Attributes:
        name: short name (test ids, bench rows).
        constructor: builds the model at its small test width.
        expected: every global op and what must happen to it (empty: none exists).
        train_size: the training crop passed to ``tlc.convert``.
        in_channels: passed to ``tlc.convert`` only where the model itself cannot tell (None).
        large: (H, W) of the effect check, 4x the training size.
        fixed_size: the original model runs only at the training size (a norm built for it).
        too_small: a training size at which conversion must fail (smaller than the model's
            downsampling factor); None: the failing call passes wrong ``in_channels`` instead.
        xfail_today: what tlc lacks for this model to pass, one line; None when it passes.
        bench: builds the model wider for the 720p benchmark; None: ``constructor``.
        at_width: builds the model with ``c`` channels at its first level (the same blocks, at
            the width of the published network: 64 for RCAN, IMDN, MIRNet, HINet), for
            ``bench/corpus.py --width``; None: the model has no single width.
    """

    name: str
    constructor: Callable[[], nn.Module]
    expected: tuple[Expected, ...]
    train_size: int = 32
    in_channels: int | None = None
    large: tuple[int, int] = (128, 128)
    fixed_size: bool = False
    too_small: int | None = None
    xfail_today: str | None = None
    bench: Callable[[], nn.Module] | None = field(default=None, compare=False)
    at_width: Callable[[int], nn.Module] | None = field(default=None, compare=False)

    @property
    def has_local_site(self) -> bool:
        return any(e.status == "local" for e in self.expected)

    @property
    def kinds(self) -> str:
        """The kinds of global op in the model, for tables ("none" when there is none)."""
        return ", ".join(dict.fromkeys(e.kind for e in self.expected)) or "none"


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter perturbed by normal noise (as large as its own spread, 0.5 where it is
    constant: NAFNet's beta/gamma start at zero, norms' weights at one), batch-norm statistics
    randomised; eval mode. Deterministic for a seed. Weaker noise leaves the gates so flat that
    local and global statistics give outputs within 1e-4 of each other at 4x the training size."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            spread = p.std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (spread if spread > 0 else 0.5))
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    return model.eval()


def build(entry: Entry, seed: int = 0, wide: bool = False, width: int | None = None) -> nn.Module:
    """The entry's model with fixed-seed construction and perturbed parameters, in eval mode:
    at ``width`` channels (``entry.at_width``, which must exist) when given, else wider for the
    benchmark with ``wide``, else as the tests build it."""
    torch.manual_seed(seed)
    if width is not None:
        if entry.at_width is None:
            raise ValueError(f"{entry.name} has no width to set")
        return perturbed(entry.at_width(width), seed)
    make = entry.bench if wide and entry.bench is not None else entry.constructor
    return perturbed(make(), seed)


def converted(name: str, train_size: int = 32) -> nn.Module:
    """The corpus model ``name`` (:func:`build`) as ``tlc.convert`` returns it, its warnings
    (reported sites) silenced."""
    import warnings

    import tlc

    entry = next(e for e in CORPUS if e.name == name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = tlc.convert(build(entry), train_size=train_size)
    return model


def _shell(att: Callable[[int], nn.Module], c: int = 8) -> Callable[[], nn.Module]:
    return lambda: ca.UShell(att, c)


def _shell_at(att: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    return lambda c: ca.UShell(att, c)


def _at_blocks(suffix: str, kind: str, status: str = "local", exact: bool = False) -> tuple[Expected, ...]:
    return tuple(Expected(f"{b}.att{suffix}", kind, status, exact) for b in ca.SHELL_BLOCKS)


CORPUS: tuple[Entry, ...] = (
    Entry(
        "rcan", ca.RCAN, tuple(local(p, "avg-pool") for p in ca.RCAN_SITES),
        bench=lambda: ca.RCAN(c=16, groups=2, blocks=2),
        at_width=lambda c: ca.RCAN(c=c, groups=2, blocks=2),
    ),
    Entry(
        "mprnet", ca.MPRNetStage, tuple(local(p, "avg-pool") for p in ca.MPRNET_SITES),
        bench=lambda: ca.MPRNetStage(c=16, extra=8),
        at_width=lambda c: ca.MPRNetStage(c=c, extra=c // 2),
    ),
    Entry("nafnet", ca.NAFNet, tuple(local(p, "avg-pool") for p in ca.NAFNET_SITES), at_width=lambda c: ca.NAFNet(c)),
    Entry(
        "se-linear", _shell(ca.SELayer), _at_blocks("", "avg-pool"), too_small=2,
        bench=_shell(ca.SELayer, 16), at_width=_shell_at(ca.SELayer),
    ),
    Entry(
        "cbam", _shell(ca.CBAM), _at_blocks(".ca", "avg-pool") + _at_blocks(".ca", "max-pool"),
        too_small=2, bench=_shell(ca.CBAM, 16), at_width=_shell_at(ca.CBAM),
    ),
    Entry(
        "cbam-linear", _shell(ca.CBAMLinear), _at_blocks(".ca", "avg-pool") + _at_blocks(".ca", "max-pool"),
        too_small=2,
        bench=_shell(ca.CBAMLinear, 16), at_width=_shell_at(ca.CBAMLinear),
    ),
    Entry(
        # Strips of both axes are concatenated: their local forms (N, C, H, W) only fit together on
        # square maps, and per-window strip values would cost (H - kh + 1)(W - kw + 1)(H + W) C: reported.
        "coord-att", _shell(ca.CoordAtt),
        _at_blocks(".pool_h", "strip-mean", "reported") + _at_blocks(".pool_w", "strip-mean", "reported"),
        too_small=2, large=(128, 96),
        bench=_shell(ca.CoordAtt, 16), at_width=_shell_at(ca.CoordAtt),
    ),
    Entry(
        "eca", _shell(ca.ECA), _at_blocks("", "avg-pool"), too_small=2,
        bench=_shell(ca.ECA, 16), at_width=_shell_at(ca.ECA),
    ),
    Entry(
        "srm", _shell(ca.SRM), _at_blocks("", "mean") + _at_blocks("", "var"), too_small=2,
        bench=_shell(ca.SRM, 16), at_width=_shell_at(ca.SRM),
    ),
    Entry(
        "max-attention", _shell(ca.MaxChannelAttn), _at_blocks("", "max"), too_small=2,
        bench=_shell(ca.MaxChannelAttn, 16), at_width=_shell_at(ca.MaxChannelAttn),
    ),
    Entry(
        "gcnet", _shell(ca.ContextBlock), _at_blocks("", "context-pool"), too_small=2, large=(128, 96),
        bench=_shell(ca.ContextBlock, 16), at_width=_shell_at(ca.ContextBlock),
    ),
    Entry(
        "imdn", ca.IMDN,
        tuple(local(f"blocks.{i}.cca", "sum", exact=True) for i in range(3))
        + tuple(local(f"blocks.{i}.cca.avg_pool", "avg-pool") for i in range(3)),
        at_width=lambda c: ca.IMDN(c=c),
    ),
    Entry(
        "mirnet-skff", ca.MIRNetLite, tuple(local(f"blocks.{i}.skff", "avg-pool") for i in range(2)),
        at_width=lambda c: ca.MIRNetLite(c=c),
    ),
    Entry(
        "dehaze-skfusion", ca.DehazeUNet, (local("fusion2", "avg-pool"), local("fusion1", "avg-pool")), too_small=2,
        bench=lambda: ca.DehazeUNet(c=16), at_width=lambda c: ca.DehazeUNet(c=c),
    ),
    Entry(
        "restormer", transformers.Restormer,
        tuple(local(p, "transposed-attention") for p in transformers.RESTORMER_SITES),
    ),
    Entry(
        "kbnet", transformers.KBNet, tuple(local(p, "transposed-attention") for p in transformers.KBNET_SITES),
        too_small=1,
    ),
    Entry(
        "dat", transformers.DAT,
        (
            local("blocks.0.attn", "transposed-attention", exact=True),
            local("blocks.0.attn.channel_interaction", "avg-pool"),
            local("blocks.1.attn.channel_interaction", "avg-pool"),
        ),
    ),
    Entry(
        "retinexformer", transformers.Retinexformer,
        tuple(local(p, "transposed-attention") for p in transformers.RETINEXFORMER_SITES),
    ),
    Entry(
        "stripformer", transformers.Stripformer,
        tuple(reported(f"body.{i}.attn_{a}", f"{'row' if a == 'h' else 'column'}-attention")
              for i in range(2) for a in "hv"),
    ),
    Entry("hinet", other.HINet, (local("down_path.0.norm", "instance-norm"), local("down_path.1.norm", "instance-norm")),
          too_small=2, bench=lambda: other.HINet(c=16), at_width=lambda c: other.HINet(c=c)),
    Entry("ddpm-groupnorm", other.DDPMUNet, tuple(local(p, "group-norm") for p in other.DDPM_SITES), too_small=2),
    Entry(
        "layernorm-map", other.WholeMapLayerNorm, (local("norm1", "layer-norm"), local("norm2", "layer-norm")),
        fixed_size=True, too_small=1,
    ),
    Entry(
        "deeprft", other.DeepRFT, (reported("enc", "fft"), reported("mid", "fft")), too_small=1,
    ),
    Entry(
        "fbcnn", other.FBCNN, (reported("qf_pred", "pooled-head"),), too_small=2,
    ),
    Entry("unet", other.UNet, (), too_small=1),
)
