"""The corpus (tests/corpus): every small architecture converted with the default call.

For each model (built with a fixed seed, every parameter perturbed, eval mode):
(a) the sites the report lists, as (module path, "local"/"reported"), are exactly the expected ones;
(b) the converted model reproduces the original at the training size (max abs diff <= 1e-5);
(c) at 4x the training size it differs from the original (> 1e-4) where some op was made local,
    and equals it where none was;
(d) the caller's model is unchanged: parameters, buffers, hooks, module types, modes, outputs, also
    after a conversion with ``inplace=True`` that fails;
(e) the report's own deviation at the training size is <= 1e-5 (the calibration is not fooled by
    a model that scales its input in place).

Cases that fail today carry ``xfail(strict=True)`` with what is missing (``Entry.xfail_today``):
when the feature lands the case passes, strict turns that into an error, and the mark goes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tlc

from .corpus import CORPUS, Entry, Expected, build

Site = tuple[str, str]  # (module path, "local" | "reported")


def observed_sites(report: tlc.ConversionReport) -> set[Site]:
    """What a conversion report says happened, as (module path, "local" or "reported").

    The one place that knows the report's layout: module rules' ``converted``/``skipped`` ops (every
    path a module is attached at) and functional ``call_sites`` (the innermost module running).
    """
    sites = {(path, "local") for op in report.converted for path in op.paths}
    sites |= {(path, "reported") for op in report.skipped for path in op.paths}
    sites |= {(s.module, "local" if s.converted else "reported") for s in report.call_sites}
    return sites


def site_mismatch(expected: tuple[Expected, ...], observed: set[Site]) -> tuple[list[Expected], list[Site]]:
    """(expected sites no observed site matches, observed sites no expected site matches)."""
    missing = [e for e in expected if not any(s == e.status and e.matches(p) for p, s in observed)]
    extra = sorted((p, s) for p, s in observed if not any(s == e.status and e.matches(p) for e in expected))
    return missing, extra


def image(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Noise on a ramp across the width and a bright block: local statistics differ from global ones."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, w).expand(h, w)
    block = torch.zeros(h, w)
    block[: h // 3, : w // 3] = 0.8
    return (0.3 * torch.rand(n, 3, h, w, generator=g) + 0.5 * ramp + block).clamp(0, 1.5)


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The model's output tensors for a copy of ``x`` (some models scale their input in place)."""
    with torch.no_grad():
        out = model(x.clone())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


def convert_kwargs(entry: Entry) -> dict:
    """The default call: the training size, plus in_channels only where the model cannot tell."""
    kwargs: dict = {"train_size": entry.train_size}
    if entry.in_channels is not None:
        kwargs["in_channels"] = entry.in_channels
    return kwargs


def cases(xfail: bool) -> list:
    marks = lambda e: [pytest.mark.xfail(strict=True, reason=e.xfail_today)] if xfail and e.xfail_today else []  # noqa: E731
    return [pytest.param(e, id=e.name, marks=marks(e)) for e in CORPUS]


def test_corpus_is_large_and_names_are_unique():
    assert len(CORPUS) >= 22
    assert len({e.name for e in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("entry", cases(xfail=False))
def test_models_run_at_their_sizes(entry):
    """The corpus itself: (N, 3, H, W) in and out at the training size and, unless built for the
    training size only, at other multiples of 4, non-square."""
    model = build(entry)
    sizes = [(entry.train_size, entry.train_size)] + ([] if entry.fixed_size else [(20, 28), entry.large])
    for h, w in sizes:
        out = outputs(model, image(2, h, w, seed=3))
        assert out[0].shape == (2, 3, h, w) and all(torch.isfinite(o).all() for o in out)
    expected_paths = {e.path for e in entry.expected}
    names = dict(model.named_modules())
    assert expected_paths <= names.keys(), f"expected sites name no module: {expected_paths - names.keys()}"


@pytest.mark.parametrize("entry", [e for e in CORPUS if e.at_width is not None], ids=lambda e: e.name)
def test_models_at_a_width(entry):
    """``build(entry, width=c)`` (bench/corpus.py --width): the same sites, convolutions of c
    channels at the first level, and it runs."""
    def widths(model: torch.nn.Module) -> set[int]:
        return {m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)}

    model = build(entry, width=24)
    assert 24 in widths(model) and 24 not in widths(build(entry))
    assert {e.path for e in entry.expected} <= dict(model.named_modules()).keys()
    out = outputs(model, image(1, 20, 28, seed=3))
    assert out[0].shape == (1, 3, 20, 28)
    with pytest.raises(ValueError, match="no width"):
        build(next(e for e in CORPUS if e.at_width is None), width=24)


@pytest.mark.parametrize("entry", cases(xfail=True))
def test_default_conversion(entry):
    model = build(entry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted, report = tlc.convert(model, **convert_kwargs(entry))
    messages = [str(w.message) for w in caught]

    # (a) exactly the expected sites, each local or reported as demanded
    missing, extra = site_mismatch(entry.expected, observed_sites(report))
    assert not missing and not extra, f"missing {missing}; unexpected {extra}\n{report}"
    nothing = [m for m in messages if "no global operation found" in m]
    if entry.expected:
        assert not nothing, messages
    else:
        assert len(nothing) == 1 and len(messages) == 1, messages

    # (e) the report's own check at the training size
    assert report.max_deviation <= 1e-5, f"report.max_deviation {report.max_deviation:.3g}"
    assert not any("differs from the original" in m for m in messages), messages

    # (b) invariance at the training size, on another input, batch 2
    t = entry.train_size
    x = image(2, t, t, seed=1)
    assert max_diff(outputs(converted, x), outputs(model, x)) <= 1e-5

    # (b') and above it, where each window still covers its map: no longer run as the original
    # (inputs up to the training size are, when every window covers), the local forms still agree
    if not entry.fixed_size:
        x = image(2, 4 * (5 * t // 16), 4 * (9 * t // 32), seed=4)  # 40x36 at 32
        assert max_diff(outputs(converted, x), outputs(model, x)) <= 1e-5

    # (c) effect at 4x the training size
    x = image(1, *entry.large, seed=2)
    local = outputs(converted, x)
    assert local[0].shape == (1, 3, *entry.large) and all(torch.isfinite(o).all() for o in local)
    if entry.fixed_size:
        with pytest.raises(RuntimeError):
            outputs(model, x)  # only the converted model runs at other sizes
        return
    diff = max_diff(local, outputs(model, x))
    if entry.has_local_site:
        assert diff > 1e-4, f"converted equals the original at {entry.large} (max diff {diff:.3g})"
    else:
        assert diff <= 1e-6, f"nothing is local, yet the outputs differ by {diff:.3g}"


def snapshot(model: nn.Module, x: torch.Tensor) -> dict:
    """Everything about a model a conversion must leave alone."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": [(name, type(m)) for name, m in model.named_modules(remove_duplicate=False)],
        "params": [(name, p) for name, p in model.named_parameters()],  # the same Parameter objects
        "hooks": [
            (name, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
             dict(m._backward_pre_hooks))
            for name, m in model.named_modules(remove_duplicate=False)
        ],
        "training": [m.training for m in model.modules()],
        "output": outputs(model, x),
    }


def assert_unchanged(model: nn.Module, before: dict, x: torch.Tensor, when: str) -> None:
    after = snapshot(model, x)
    assert after["modules"] == before["modules"], f"module types changed {when}"
    assert [n for n, _ in after["params"]] == [n for n, _ in before["params"]], f"parameters changed {when}"
    assert all(p is q for (_, p), (_, q) in zip(after["params"], before["params"])), f"parameters replaced {when}"
    assert after["state"].keys() == before["state"].keys(), f"state_dict keys changed {when}"
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items()), f"state changed {when}"
    assert after["hooks"] == before["hooks"], f"hooks left behind {when}"
    assert after["training"] == before["training"], f"train/eval flags changed {when}"
    assert max_diff(after["output"], before["output"]) == 0.0, f"output changed {when}"
    assert torch._C._len_torch_function_stack() == 0, f"a torch function mode is still active {when}"


@pytest.mark.parametrize("entry", cases(xfail=False))
def test_caller_model_unchanged(entry):
    """(d) The default conversion (whatever its outcome) and failing in-place conversions leave the
    caller's model as it was."""
    model = build(entry)
    t = entry.train_size
    x = image(1, t, t, seed=4)
    before = snapshot(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            converted, _ = tlc.convert(model, **convert_kwargs(entry))
            assert converted is not model
        except tlc.ConversionError:
            pass
    assert_unchanged(model, before, x, "by the default conversion")

    # Conversions that must fail, in place: a calibration input with the wrong channel count, and
    # a training size smaller than the model's downsampling factor. functional=True: today's
    # module-only path returns early, without running the model, when no rule matches.
    wrong = (entry.in_channels or 3) + 2
    failing = [{"train_size": t, "in_channels": wrong}]
    if entry.too_small is not None:
        failing.append({"train_size": entry.too_small})
    for kwargs in failing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(tlc.ConversionError):
                tlc.convert(model, inplace=True, functional=True, **kwargs)
        assert_unchanged(model, before, x, f"by a failing in-place conversion ({kwargs})")


@pytest.mark.parametrize("entry", cases(xfail=False))
def test_converted_forwards_repeat_exactly(entry):
    """A converted model gives the same numbers at every forward on one input, past the first
    (which may take passes of its own where later ones share one), on the call-by-call path (a map
    of fewer than 1,024 windows) and the chained one: bookkeeping matched by memory address once
    had a mean take another map's windows' means, depending on where the allocator put each map."""
    t = entry.train_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, _ = tlc.convert(build(entry), **convert_kwargs(entry))
    for h, w in [(t, t)] if entry.fixed_size else [(2 * t + 8, 2 * t + 16), entry.large]:
        x = image(1, h, w, seed=6)
        first, *later = [outputs(converted, x) for _ in range(4)]
        assert all(max_diff(out, later[0]) == 0 for out in later[1:]), (h, w)
        assert max_diff(first, later[0]) < 1e-5


@pytest.mark.parametrize("entry", cases(xfail=False))
def test_covering_windows_give_the_originals_bits(entry):
    """Above the training size, where every window (1.5x) still covers its map, a converted model
    computes what the original does, to the bit, at the first forward and those after it (which
    run as the original): hand-written statistics summed in parts (IMDN's ``sum(3).sum(2)``)
    included."""
    if entry.fixed_size:
        pytest.skip("the original runs at its training size only")
    t = entry.train_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(entry)
        converted, _ = tlc.convert(model, **convert_kwargs(entry))
    x = image(2, t + t // 4, t + t // 8, seed=8)
    expected = outputs(model, x)
    for _ in range(2):
        assert max_diff(outputs(converted, x), expected) == 0


def test_site_matching():
    """The comparison itself: prefixes match descendants, exact paths only themselves, statuses must agree."""
    expected = (Expected("a.b", "avg-pool", "local"), Expected("a", "sum", "local", exact=True))
    assert site_mismatch(expected, {("a.b", "local"), ("a", "local")}) == ([], [])
    assert site_mismatch(expected, {("a.b.pool", "local"), ("a", "local")}) == ([], [])
    missing, extra = site_mismatch(expected, {("a.b", "local"), ("a.c", "local")})
    assert missing == [expected[1]] and extra == [("a.c", "local")]
    missing, extra = site_mismatch(expected, {("a.b", "reported"), ("a", "local")})
    assert missing == [expected[0]] and extra == [("a.b", "reported")]
    assert site_mismatch((), set()) == ([], [])
    assert site_mismatch((), {("", "local")}) == ([], [("", "local")])
