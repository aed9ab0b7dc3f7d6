"""Chains of elementwise calls on pooled values, evaluated a block of window positions at a time
(tlc.convert.blocked, PooledValues' ElementwiseForm): the same numbers as the calls one by one,
computed once, from the values as they were before an in-place change."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F

import tlc
from tlc.convert.blocked import Slot, Step, evaluate_blocked
from tlc.convert.pooled_values import PooledValues
from tlc.ops.pool import valid_local_mean

from .corpus import CORPUS, build

pooled_values = importlib.import_module("tlc.convert.pooled_values")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block", [1, 7, 256, 1000, 5000])
def test_blocks_give_the_bits_of_the_whole_calls(dtype, block):
    g = torch.Generator().manual_seed(0)
    d, n = 5, 1000
    a, b = torch.rand(d, n, generator=g, dtype=dtype), torch.rand(d, n, generator=g, dtype=dtype)
    w, s = torch.randn(d, 1, generator=g, dtype=dtype), torch.tensor(0.25, dtype=dtype)
    steps = [
        Step(torch.add, (Slot(1), 1e-5), {}),  # 4: b + eps
        Step(torch.sqrt, (Slot(4),), {}),  # 5
        Step(torch.mul, (Slot(0), Slot(2)), {}),  # 6: a * w
        Step(torch.Tensor.__rsub__, (Slot(5), Slot(3)), {}),  # 7: s - sqrt(...)
        Step(torch.addcmul, (Slot(6), Slot(7), Slot(2)), {"value": 2.0}),  # 8
        Step(torch.div, (Slot(8), Slot(0)), {}),
    ]
    expected = torch.addcmul(a * w, s - torch.sqrt(b + 1e-5), w, value=2.0) / a
    out = torch.empty(n, d, dtype=dtype).t()  # any strides
    got = evaluate_blocked([a, b, w, s], steps, out, block)
    assert got is out
    assert torch.equal(out, expected)


def test_blocks_refuse_no_steps_and_a_step_changing_the_shape():
    a = torch.rand(3, 10)
    with pytest.raises(ValueError, match="no steps"):
        evaluate_blocked([a], [], torch.empty(3, 10))
    with pytest.raises(ValueError, match=r"gave \(1, 4\)"):
        evaluate_blocked([a], [Step(torch.sum, (Slot(0), 0, True), {})], torch.empty(3, 10), 4)


def _srm_chain(values: PooledValues, mean, var, c0, c1, running):
    """SRM's gate on pooled mean and variance, each call through ``values.handle``."""
    call = values.handle
    shifted = call(torch.Tensor.__add__, (), (var, 1e-5), {})
    std = call(torch.Tensor.sqrt, (), (shifted,), {})
    z = call(torch.Tensor.__add__, (), (call(torch.Tensor.__mul__, (), (mean, c0), {}), call(torch.Tensor.__mul__, (), (std, c1), {})), {})
    return call(F.batch_norm, (), (z, *running, False, 0.1, 1e-5), {})


def _srm_reference(mean, var, c0, c1, running):
    rm, rv, w, b = running
    z = mean * c0 + torch.sqrt(var + 1e-5) * c1
    return F.batch_norm(z, rm, rv, w, b, False, 0.1, 1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_hand_written_gate_on_pooled_statistics_is_one_chain(monkeypatch, batch):
    """SRM's eight calls (add, sqrt, two products, a sum, batch norm) on per-window means and
    variances of a 16-channel map: batch 1 evaluates them as one chain (one blocked evaluation of
    six steps), batch 2 call by call; both give the per-window formula's numbers."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 81, 94, generator=g, dtype=torch.float64)
    window = (7, 9)
    c0, c1 = torch.randn(1, 16, 1, 1, generator=g, dtype=torch.float64), torch.randn(1, 16, 1, 1, generator=g, dtype=torch.float64)
    running = tuple(torch.rand(16, generator=g, dtype=torch.float64) + 0.5 for _ in range(4))
    windows = x.unfold(2, window[0], 1).unfold(3, window[1], 1)
    valid_mean = windows.mean((-2, -1))
    valid_var = windows.var((-2, -1), unbiased=False)
    calls = []
    original = pooled_values.evaluate_blocked

    def counted(inputs, steps, out, block=None):
        calls.append(len(steps))
        return original(inputs, steps, out, block)

    monkeypatch.setattr(pooled_values, "evaluate_blocked", counted)
    values = PooledValues()
    mean = values.start(x.mean((2, 3), keepdim=True), valid_mean, x.shape[-2:], "mean")
    var = values.start(x.var((2, 3), keepdim=True, unbiased=False), valid_var, x.shape[-2:], "var")
    gate = _srm_chain(values, mean, var, c0, c1, running)
    torch.testing.assert_close(gate, _srm_reference(mean, var, c0, c1, running), rtol=0, atol=1e-14)
    assert calls == []  # nothing computed before a read
    local = values.local(gate)
    assert calls == ([6] if batch == 1 else [])
    gh, gw = valid_mean.shape[-2:]
    expected = _srm_reference(valid_mean, valid_var, c0.view(1, 16, 1, 1), c1.view(1, 16, 1, 1), running)
    torch.testing.assert_close(local, expected.permute(0, 2, 3, 1).reshape(batch * gh * gw, 16, 1, 1), rtol=0, atol=1e-13)
    values.local(gate)
    assert len(calls) == (1 if batch == 1 else 0)  # once


def test_a_chain_reads_its_values_as_they_were_before_an_in_place_change():
    """A chain is computed before a value it reads changes in place; a chain step nothing read
    is computed on its own when read later."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 70, 80, generator=g)
    values = PooledValues()
    y = values.start(x.mean((2, 3), keepdim=True), valid_local_mean(x, 5), x.shape[-2:])
    before = values.local(y).clone()
    doubled = values.handle(torch.Tensor.__mul__, (), (y, 2.0), {})
    shifted = values.handle(torch.Tensor.__add__, (), (doubled, 1.0), {})
    values.before_call("add_", (y, 3.0), {})
    values.handle(torch.Tensor.add_, (), (y, 3.0), {})
    torch.testing.assert_close(values.local(shifted), before * 2 + 1, rtol=0, atol=0)
    torch.testing.assert_close(values.local(doubled), before * 2, rtol=0, atol=0)
    torch.testing.assert_close(values.local(y), before + 3, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["srm", "imdn"])
def test_converted_models_with_chains_give_the_numbers_of_calls_one_by_one(monkeypatch, name):
    """The corpus's SRM and IMDN at a size where their gates' chains run blocked: the converted
    output as with every call followed on its own (chains switched off)."""
    entry = next(e for e in CORPUS if e.name == name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = tlc.convert(build(entry), train_size=32)
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(3))
    calls = []
    original = pooled_values.evaluate_blocked
    monkeypatch.setattr(pooled_values, "evaluate_blocked", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        chained = model(x)
        assert calls  # the chains ran
        monkeypatch.setattr(pooled_values, "_CHAIN_MIN_POSITIONS", 10**12)
        calls.clear()
        one_by_one = model(x)
        assert not calls
    torch.testing.assert_close(chained, one_by_one, rtol=0, atol=1e-6)
