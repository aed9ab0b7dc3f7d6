"""Chains of elementwise steps in one pass (tlc.ops.chain) and the chains PooledValues builds from
a gate's elementwise calls on pooled statistics (ElementwiseForm): each element through the same
IEEE operations as the calls one by one, computed once, from the values as they were before an
in-place change."""

from __future__ import annotations

import importlib
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlc.convert.pooled_values import PooledValues
from tlc.ops.chain import ChainStep, evaluate_chain
from tlc.ops.pool import valid_local_mean

from .corpus import converted

pooled_values = importlib.import_module("tlc.convert.pooled_values")
pooled_forms = importlib.import_module("tlc.convert.pooled_forms")
chain_module = importlib.import_module("tlc.ops.chain")
gate_module = importlib.import_module("tlc.ops.gate")

needs_kernel = pytest.mark.skipif(chain_module.chain_rows_kernel is None, reason="numba is not installed")


def _round(exact: Fraction, kind: type) -> np.floating:
    """``exact`` rounded to the nearest ``kind`` (np.float32 / np.float64), ties to even."""
    guess = kind(float(exact))  # float() rounds correctly to float64; float32 may be one off
    candidates = [np.nextafter(guess, kind(-np.inf)), guess, np.nextafter(guess, kind(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.frombuffer(c.tobytes(), np.uint8)[0]) & 1))


def _numpy_reference(op: str, *xs: np.ndarray) -> np.ndarray:
    """One IEEE operation per element, in the arrays' dtype (numpy's ufuncs are correctly
    rounded for these); the fused multiply-add exactly, through rationals."""
    if op == "addcmul":
        a, b, c = xs
        exact = [Fraction(float(p)) + Fraction(float(q)) * Fraction(float(r)) for p, q, r in zip(a.ravel(), b.ravel(), c.ravel())]
        return np.array([_round(e, a.dtype.type) for e in exact], dtype=a.dtype).reshape(a.shape)
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "sqrt": np.sqrt, "neg": np.negative, "abs": np.abs}[op]
    return fn(*xs)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "sqrt", "neg", "abs", "addcmul"])
def test_each_step_is_the_ieee_operation(dtype, op):
    """Every step against numpy (fma: exact rationals), on odd-sized maps with values and
    per-row constants as operands."""
    g = torch.Generator().manual_seed(0)
    d, n = 3, 1037  # not a multiple of the kernel's block
    a, b, c = (torch.randn(d, n, generator=g, dtype=dtype) for _ in range(3))
    if op == "sqrt":
        a = a.abs()
    count = chain_module.STEPS[op][0]
    got = evaluate_chain([a, b, c][:count], a.new_empty((0, d)), [ChainStep(op, tuple(range(count)))])
    expected = _numpy_reference(op, *(t.numpy() for t in [a, b, c][:count]))
    assert got.dtype == dtype and torch.equal(got, torch.from_numpy(expected))
    constants = torch.randn(count, d, generator=g, dtype=dtype).abs()  # every operand a constant but the first
    got = evaluate_chain([a], constants, [ChainStep(op, (0, *range(1, count)))])
    operands = [a.numpy()] + [np.repeat(constants[i - 1, :, None].numpy(), n, axis=1) for i in range(1, count)]
    assert torch.equal(got, torch.from_numpy(_numpy_reference(op, *operands)))


def _correct_sqrt(t: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root (numpy's; torch's vector sqrt may be one bit off)."""
    return torch.from_numpy(np.sqrt(t.numpy()))


def _gate_formula(m, v, w, sqrt=torch.sqrt):
    """SRM-like: (m * w0 + sqrt(v + w1)) * w2 + w3, then divided by m, less v, negated, absolute."""
    z = torch.addcmul(w[3], m * w[0] + sqrt(v + w[1]), w[2])
    return (-((z / m) - v)).abs()


_GATE_STEPS = [  # operands: 0 m, 1 v, 2-5 constants w0..w3, then the steps (6 on)
    ChainStep("add", (1, 3)),  # 6: v + w1
    ChainStep("sqrt", (6,)),  # 7
    ChainStep("mul", (0, 2)),  # 8: m * w0
    ChainStep("add", (8, 7)),  # 9
    ChainStep("addcmul", (5, 9, 4)),  # 10: w3 + 9 * w2
    ChainStep("div", (10, 0)),  # 11
    ChainStep("sub", (11, 1)),  # 12
    ChainStep("neg", (12,)),  # 13
    ChainStep("abs", (13,)),  # 14
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(1, 1), (5, 1023), (7, 1025), (16, 3000)])
@pytest.mark.parametrize("kernel", [True, False])
def test_a_chain_gives_the_calls_numbers(monkeypatch, dtype, size, kernel):
    """A nine-step chain against torch's calls one by one on the whole maps (for the CPU kernel
    with a correctly rounded sqrt), with the kernel and with the torch path; into a strided
    ``out`` too."""
    if kernel and chain_module.chain_rows_kernel is None:
        pytest.skip("numba is not installed")
    if not kernel:
        monkeypatch.setattr(chain_module, "chain_rows_kernel", None)
    g = torch.Generator().manual_seed(1)
    d, n = size
    m, v = torch.randn(d, n, generator=g, dtype=dtype), torch.rand(d, n, generator=g, dtype=dtype)
    w = torch.randn(4, d, generator=g, dtype=dtype)
    w[1] = 1e-5
    # The kernel's sqrt is correctly rounded; the torch path is torch's calls on the whole maps.
    expected = _gate_formula(m, v, w[:, :, None], _correct_sqrt if kernel else torch.sqrt)
    assert torch.equal(evaluate_chain([m, v], w, _GATE_STEPS), expected)
    out = torch.empty(n, d, dtype=dtype).t()
    assert evaluate_chain([m, v], w, _GATE_STEPS, out=out) is out
    assert torch.equal(out, expected)


@needs_kernel
def test_large_maps_differ_from_torch_only_by_its_vector_sqrt():
    """On 5 M values torch's float32 sqrt (a vector library) is off by one unit in the last place
    at some elements; the chain's is correctly rounded (as torch's on the pooled (1, C, 1, 1)
    values the local ones stand in for): every other step the same bits."""
    g = torch.Generator().manual_seed(2)
    a = torch.rand(16, 320_000, generator=g) + 0.1
    steps = [ChainStep("sqrt", (0,))]
    got = evaluate_chain([a], a.new_empty((0, 16)), steps)
    assert torch.equal(got, a.double().sqrt().float())  # correctly rounded
    assert (got - a.sqrt()).abs().max() <= torch.finfo(torch.float32).eps
    b = torch.randn(16, 320_000, generator=g)
    got = evaluate_chain([a, b], a.new_empty((0, 16)), [ChainStep("mul", (0, 1)), ChainStep("addcmul", (0, 2, 1)), ChainStep("div", (3, 1))])
    assert torch.equal(got, torch.addcmul(a, a * b, b) / b)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("positions", [4096, 5000, 9217])
@pytest.mark.parametrize("outputs,with_bias", [(3, True), (4, False), (9, True)])
def test_a_chain_and_the_layer_after_it_in_one_pass(dtype, positions, outputs, with_bias):
    """gate.chain_product: a nine-step chain and a 1x1 layer on its values, a block of positions
    at a time (blocks of 1024; 5000 and 9217 end in partial ones): the bits of the chain's kernel
    followed by the channel product, and within the products' rounding of the chain's reference
    (the calls one by one, a correctly rounded sqrt) times the layer in float64."""
    g = torch.Generator().manual_seed(8)
    d = 6
    m, v = torch.randn(d, positions, generator=g, dtype=dtype), torch.rand(d, positions, generator=g, dtype=dtype)
    w = torch.randn(4, d, generator=g, dtype=dtype)
    w[1] = 1e-5  # v + w1 >= 0: a square root of every value
    layer = torch.randn(outputs, d, generator=g, dtype=dtype)
    bias = torch.randn(outputs, generator=g, dtype=dtype) if with_bias else None
    fused = gate_module.chain_product([m, v], w, _GATE_STEPS, layer, bias)
    assert fused.shape == (outputs, positions) and fused.dtype == dtype
    assert torch.equal(fused, gate_module.channel_product(layer, evaluate_chain([m, v], w, _GATE_STEPS), bias=bias))
    chain = _gate_formula(m, v, w[:, :, None], _correct_sqrt).double()
    reference = layer.double() @ chain + (0 if bias is None else bias.double()[:, None])
    scale = (layer.double().abs() @ chain.abs()).max().item()
    assert (fused.double() - reference).abs().max().item() <= 8 * torch.finfo(dtype).eps * scale


@needs_kernel
def test_a_chain_and_its_layer_run_apart_where_the_kernels_would_not():
    """chain_product is None (the caller evaluates the chain and takes the product) for fewer
    positions than the products' kernel takes, more than four input maps, autograd, a dtype
    other than the weight's."""
    g = torch.Generator().manual_seed(9)
    maps = [torch.randn(3, 5000, generator=g) for _ in range(5)]
    layer, none = torch.randn(2, 3, generator=g), maps[0].new_empty((0, 3))
    add = [ChainStep("add", (0, 1))]
    assert gate_module.chain_product(maps[:2], none, add, layer) is not None
    assert gate_module.chain_product([t[:, :100] for t in maps[:2]], none, add, layer) is None
    five = [ChainStep("add", (0, 1)), *(ChainStep("add", (4 + i, i + 2)) for i in range(1, 4))]
    assert gate_module.chain_product(maps, none, five, layer) is None
    with torch.enable_grad():
        assert gate_module.chain_product([maps[0].requires_grad_(), maps[1]], none, add, layer) is None
    assert gate_module.chain_product(maps[1:3], none, add, layer.double()) is None


@pytest.mark.parametrize("inputs", [1, 4, 5])
def test_any_number_of_inputs(inputs):
    """Up to four maps run in the kernel, more in torch: the same sum."""
    g = torch.Generator().manual_seed(3)
    maps = [torch.randn(3, 2050, generator=g) for _ in range(inputs)]
    steps = [ChainStep("add", (0, i)) if i == 1 else ChainStep("add", (inputs + i - 2, i)) for i in range(1, inputs)] or [ChainStep("neg", (0,))]
    expected = -maps[0] if inputs == 1 else sum(maps[1:], maps[0])
    assert torch.equal(evaluate_chain(maps, maps[0].new_empty((0, 3)), steps), expected)


def test_bad_chains_are_refused():
    a = torch.rand(3, 10)
    none = a.new_empty((0, 3))
    with pytest.raises(ValueError, match="unknown chain step 'exp'"):
        ChainStep("exp", (0,))
    with pytest.raises(ValueError, match="takes 2 operands"):
        ChainStep("add", (0,))
    with pytest.raises(ValueError, match="at least one step"):
        evaluate_chain([a], none, [])
    with pytest.raises(ValueError, match="at least one input"):
        evaluate_chain([], none, [ChainStep("neg", (0,))])
    with pytest.raises(ValueError, match=r"only operands 0..1 exist"):
        evaluate_chain([a], none, [ChainStep("neg", (0,)), ChainStep("add", (0, 2))])
    with pytest.raises(ValueError, match=r"must be \(D, G\)"):
        evaluate_chain([a, torch.rand(3, 11)], none, [ChainStep("add", (0, 1))])
    with pytest.raises(ValueError, match=r"constants must be \(K, 3\)"):
        evaluate_chain([a], torch.rand(1, 4), [ChainStep("add", (0, 1))])
    with pytest.raises(ValueError, match="one floating dtype"):
        evaluate_chain([a], torch.rand(1, 3, dtype=torch.float64), [ChainStep("add", (0, 1))])
    with pytest.raises(ValueError, match="out must be"):
        evaluate_chain([a], none, [ChainStep("neg", (0,))], out=torch.empty(3, 9))


# ----------------------------------------------------------------------------- chains of pooled values


def _step_ops(calls: list) -> list[list[str]]:
    """The steps' ops of each recorded ``evaluate_chain(values, constants, steps, out)`` call."""
    return [[step.op for step in args[2]] for args, _ in calls]


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
def test_a_hand_written_gate_on_pooled_statistics_is_one_chain(spy, batch):
    """SRM's eight calls (add, sqrt, two products, a sum, batch norm) on per-window means and
    variances of a 16-channel map: batch 1 evaluates them as one chain of six steps, batch 2 call
    by call; both give the per-window formula's numbers."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 81, 94, generator=g, dtype=torch.float64)
    window = (7, 9)
    c0, c1 = torch.randn(1, 16, 1, 1, generator=g, dtype=torch.float64), torch.randn(1, 16, 1, 1, generator=g, dtype=torch.float64)
    running = tuple(torch.rand(16, generator=g, dtype=torch.float64) + 0.5 for _ in range(4))
    windows = x.unfold(2, window[0], 1).unfold(3, window[1], 1)
    valid_mean = windows.mean((-2, -1))
    valid_var = windows.var((-2, -1), unbiased=False)
    calls = spy(pooled_forms, "evaluate_chain")
    values = PooledValues()
    mean = values.start(x.mean((2, 3), keepdim=True), valid_mean, x.shape[-2:], "mean")
    var = values.start(x.var((2, 3), keepdim=True, unbiased=False), valid_var, x.shape[-2:], "var")
    gate = _srm_chain(values, mean, var, c0, c1, running)
    torch.testing.assert_close(gate, _srm_reference(mean, var, c0, c1, running), rtol=0, atol=1e-14)
    assert calls == []  # nothing computed before a read
    local = values.local(gate)
    assert _step_ops(calls) == ([["mul", "add", "sqrt", "mul", "add", "addcmul"]] if batch == 1 else [])  # depth first from the root
    gh, gw = valid_mean.shape[-2:]
    expected = _srm_reference(valid_mean, valid_var, c0.view(1, 16, 1, 1), c1.view(1, 16, 1, 1), running)
    torch.testing.assert_close(local, expected.permute(0, 2, 3, 1).reshape(batch * gh * gw, 16, 1, 1), rtol=0, atol=1e-13)
    values.local(gate)
    assert len(calls) == (1 if batch == 1 else 0)  # once


def test_calls_that_are_not_chain_steps_are_followed(spy):
    """A product by a tensor of another dtype (promotion), ``add`` with ``alpha``, an exponent
    other than 2 or 0.5 and a division with a rounding mode are followed call by call, with the
    numbers of the calls; ``pow`` 2 and 0.5 are a product and a root."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 70, 80, generator=g)
    calls = spy(pooled_forms, "evaluate_chain")
    values = PooledValues()
    y = values.start(x.mean((2, 3), keepdim=True), valid_local_mean(x, 5), x.shape[-2:])
    before = values.local(y).clone()
    call = values.handle
    for fn, args, kwargs, formula in [
        (torch.add, (y, 2.0), {"alpha": 3}, lambda t: t + 6.0),
        (torch.Tensor.pow, (y, 3), {}, lambda t: t.pow(3)),
        (torch.div, (y, 3.0), {"rounding_mode": "floor"}, lambda t: torch.div(t, 3.0, rounding_mode="floor")),
        (torch.mul, (y, torch.full((1, 16, 1, 1), 2.0, dtype=torch.float64)), {}, lambda t: t.double() * 2),
    ]:
        out = call(fn, (), args, kwargs)
        torch.testing.assert_close(values.local(out), formula(before), rtol=0, atol=0)
    assert calls == []
    squared = call(torch.Tensor.pow, (), (y, 2), {})
    root = call(torch.Tensor.__pow__, (), (call(torch.Tensor.abs, (), (squared,), {}), 0.5), {})
    torch.testing.assert_close(values.local(root), before.abs(), rtol=0, atol=0)  # sqrt(y * y) = |y| in IEEE (no overflow here)
    assert _step_ops(calls) == [["mul", "abs", "sqrt"]]


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
def test_converted_models_with_chains_give_the_numbers_of_calls_one_by_one(monkeypatch, spy, name):
    """The corpus's SRM and IMDN at a size where their gates' chains run (IMDN's in one pass with
    its first layer): the converted output as with every call followed on its own (chains
    switched off), within torch's vector sqrt's last bit."""
    model = converted(name)
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(3))
    chains, with_layer = spy(pooled_forms, "evaluate_chain"), spy(pooled_forms, "chain_product")
    with torch.no_grad():
        chained = model(x)
        assert chains or with_layer  # the chains ran
        monkeypatch.setattr(pooled_values, "_CHAIN_MIN_POSITIONS", 10**12)
        chains.clear()
        with_layer.clear()
        one_by_one = model(x)
        assert not chains and not with_layer
    torch.testing.assert_close(chained, one_by_one, rtol=0, atol=1e-6)


def test_imdns_chain_and_its_first_layer_in_one_pass_give_the_two_passes_bits(monkeypatch, spy):
    """The corpus's IMDN converted (720 x 1280 / 4 at train 8, where its gates' chains run): the
    output with its contrast chain and first layer in one pass (pooled_forms.chain_product) is
    the output with the chain computed and then the layer, to the bit."""
    model = converted("imdn", train_size=8)
    x = torch.rand(1, 3, 180, 320, generator=torch.Generator().manual_seed(4))
    used = spy(pooled_forms, "chain_product")
    with torch.no_grad():
        together = model(x)
        assert used
        monkeypatch.setattr(pooled_forms, "chain_product", lambda *a: None)
        apart = model(x)
    assert torch.equal(together, apart)


@pytest.mark.parametrize("name", ["srm", "imdn", "gcnet", "eca", "cbam-linear"])
def test_a_converted_forward_leaves_no_tensor_in_a_reference_cycle(name):
    """Nothing a converted forward builds holds tensors in a reference cycle: such tensors (a
    chain's input maps, ~165 MB a forward at 720p) live until the garbage collector happens to
    run, and the heap grows and faults meanwhile. Found with gc.DEBUG_SAVEALL: a chain's
    traversal was a closure calling itself."""
    import gc

    model = converted(name)
    x = torch.rand(1, 3, 96, 136, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        # The second forward may take other routes than the first (a pending mean read or not),
        # and a kernel compiled while the collector saves everything leaves its exceptions'
        # tracebacks, whose frames hold the caller's tensors, among the garbage once: a cycle a
        # forward builds shows in every forward, so the last of two watched ones must be clean.
        model(x)
        model(x)
        for _ in range(2):
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                model(x)
                gc.collect()
                cyclic = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            if not cyclic:
                break
    assert cyclic == []
