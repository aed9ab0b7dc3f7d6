"""tlc.convert.spare_buffers: dead local values' buffers reused for elementwise results, never one
that anything alive still reads."""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from tlc.convert.pooled_values import PooledValues
from tlc.convert.spare_buffers import SpareBuffers
from tlc.ops.pool import window_sums

from .corpus.channel_attention import SELayer


def _spare_of(buffers: SpareBuffers, t: torch.Tensor) -> None:
    address = buffers.hold(t, torch.zeros(1))
    assert address is not None
    buffers.release(address, t)


@pytest.mark.parametrize(
    ("name", "args", "plain"),
    [
        ("sigmoid", lambda a, b: (a,), lambda a, b: torch.sigmoid(a)),
        ("__mul__", lambda a, b: (a, b), lambda a, b: a * b),
        ("__rsub__", lambda a, b: (a, b), lambda a, b: b - a),
        ("add", lambda a, b: (a, 0.25), lambda a, b: a + 0.25),
        ("addcmul", lambda a, b: (a, b, a), lambda a, b: torch.addcmul(a, b, a)),
        ("__rtruediv__", lambda a, b: (a, b), lambda a, b: b / a),
    ],
)
def test_results_go_into_a_spare_of_the_same_layout_with_the_same_bits(name, args, plain):
    torch.manual_seed(0)
    a = torch.randn(5, 40).t()  # (40, 5), positions the fastest axis, as local values lie
    b = torch.randn(5, 40).t()
    buffers = SpareBuffers()
    other = torch.empty(40, 5)  # contiguous: another layout of as many elements, seen as a's
    spare = torch.empty(5, 40).t()
    _spare_of(buffers, other)
    _spare_of(buffers, spare)
    first = buffers.compute_into(name, args(a, b), {}, (40, 5), torch.float32)
    second = buffers.compute_into(name, args(a, b), {}, (40, 5), torch.float32)
    assert {first.data_ptr(), second.data_ptr()} == {other.data_ptr(), spare.data_ptr()}
    for out in (first, second):
        assert out.stride() == a.stride() and torch.equal(out, plain(a, b))
    assert buffers.compute_into(name, args(a, b), {}, (40, 5), torch.float32) is None  # used up
    buffers.clear()


def test_over_the_limit_the_smallest_spare_goes_not_the_largest():
    # Selective-kernel fusion: its softmax's large buffer dies, then three smaller branch outputs;
    # the next fusion's softmax must still find the large one.
    buffers = SpareBuffers()
    large = torch.empty(300, 12)
    _spare_of(buffers, large)
    small = [torch.empty(300, 4) for _ in range(3)]
    for t in small:
        _spare_of(buffers, t)
    taken = buffers.take((300, 12), (12, 1), torch.float32, torch.device("cpu"))
    assert taken is not None and taken.data_ptr() == large.data_ptr()
    kept = [buffers.take((300, 4), (4, 1), torch.float32, torch.device("cpu")) for _ in range(3)]
    assert sum(t is not None for t in kept) == 2  # one small one made room for the large
    buffers.clear()


def test_no_spare_for_other_calls_dtypes_shapes_or_autograd():
    a = torch.randn(6, 4)
    buffers = SpareBuffers()
    _spare_of(buffers, torch.empty(6, 4))
    assert buffers.compute_into("softmax", (a, 1), {}, (6, 4), torch.float32) is None
    assert buffers.compute_into("sigmoid", (a.double(),), {}, (6, 4), torch.float64) is None
    assert buffers.compute_into("sigmoid", (a[:3],), {}, (3, 4), torch.float32) is None
    assert buffers.compute_into("__rsub__", (a, 2.0), {}, (6, 4), torch.float32) is None  # 2.0 - a: no tensor first
    with torch.enable_grad():
        assert buffers.compute_into("sigmoid", (a.requires_grad_(),), {}, (6, 4), torch.float32) is None
    out = buffers.compute_into("sigmoid", (a.detach(),), {}, (6, 4), torch.float32)
    assert out is not None and torch.equal(out, a.detach().sigmoid())


def test_buffers_shared_with_real_tensors_with_other_values_or_not_dense_are_never_kept():
    buffers = SpareBuffers()
    t = torch.randn(4, 3)
    assert buffers.hold(t, t.view(2, 6)) is None  # the real tensor's own memory
    assert buffers.hold(torch.randn(1, 3).expand(4, 3), torch.zeros(1)) is None  # overlapping
    assert buffers.hold(torch.randn(4, 6)[:, :3], torch.zeros(1)) is None  # part of a larger buffer
    assert buffers.hold(torch.randn(4, 3, requires_grad=True), torch.zeros(1)) is None
    first = torch.randn(4, 3)
    view = first.view(12)  # two local values on one buffer: kept only once both died
    address = buffers.hold(first, torch.zeros(1))
    assert buffers.hold(view, torch.zeros(1)) == address
    buffers.release(address, first)
    assert buffers.compute_into("neg", (torch.randn(4, 3),), {}, (4, 3), torch.float32) is None
    buffers.release(address, view)
    out = buffers.compute_into("neg", (torch.randn(12),), {}, (12,), torch.float32)
    assert out is not None and out.data_ptr() == first.data_ptr()


def test_a_value_read_through_a_view_of_a_dead_one_is_never_overwritten():
    """Followed by PooledValues: the pooled mean dies while a view of it lives on; the calls after
    that must not write into the view's memory."""
    x = torch.randn(2, 3, 9, 8)
    with torch.inference_mode():
        values = PooledValues()
        pooled = values.start(x.mean((2, 3), keepdim=True), window_sums(x, 3) / 9, x.shape[-2:])
        flat = values.handle(torch.Tensor.view, (), (pooled, 2, 3), {})
        kept = values.local(flat).clone()
        del pooled
        gc.collect()
        results = [values.handle(torch.sigmoid, (), (flat,), {}) for _ in range(4)]
        assert torch.equal(values.local(flat), kept)
        for r in results:
            assert torch.equal(values.local(r), kept.sigmoid())
        values.finish(None)


@pytest.mark.parametrize("name", ["linear", "conv2d"])
def test_products_on_channel_first_values_go_into_a_spare(name):
    from tlc.convert.channel_first import pointwise_conv

    torch.manual_seed(0)
    x = torch.randn(6, 50).t()  # (50, 6) channel first
    weight, bias = torch.randn(4, 6), torch.randn(4)
    buffers = SpareBuffers()
    spare = torch.empty(4, 50).t()
    _spare_of(buffers, spare)
    if name == "linear":
        out = pointwise_conv("linear", (x, weight, bias), {}, buffers.take)
        want = torch.nn.functional.linear(x, weight, bias)
    else:
        out = pointwise_conv("conv2d", (x.view(50, 6, 1, 1), weight.view(4, 6, 1, 1), bias), {}, buffers.take)
        want = torch.nn.functional.conv2d(x.reshape(50, 6, 1, 1), weight.view(4, 6, 1, 1), bias)
    assert out.data_ptr() == spare.data_ptr()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert buffers.take((50, 4), (1, 50), torch.float32, x.device) is None  # taken


def test_cat_and_softmax_over_branches_go_into_a_spare_with_the_same_bits():
    """Selective-kernel fusion's ``cat`` of the branches' gates and ``softmax`` over the branches,
    on values laid out channel first (positions fastest), written into a dead value's buffer."""
    from tlc.convert.channel_first import batch_last

    torch.manual_seed(0)
    positions = 37
    parts = [torch.randn(4, 1, 1, positions).movedim(-1, 0) for _ in range(3)]  # (37, 4, 1, 1) each
    plain_cat = torch.cat(parts, 1)
    buffers = SpareBuffers()
    spare = torch.empty(12, 1, 1, positions).movedim(-1, 0)  # the cat's layout: (37, 12, 1, 1), positions fastest
    _spare_of(buffers, torch.empty(positions, 11, 1, 1))  # fewer elements: not taken
    _spare_of(buffers, spare)
    cat = batch_last("cat", (parts, 1), {}, buffers.take)
    assert cat.data_ptr() == spare.data_ptr() and cat.stride() == spare.stride() and torch.equal(cat, plain_cat)
    assert batch_last("cat", (parts, 1), {}, buffers.take).data_ptr() != spare.data_ptr()  # used up

    branches = (torch.randn(3, 4, 1, 1, positions) * 3).movedim(-1, 0)  # (37, 3, 4, 1, 1)
    spare = torch.empty(3, 4, 1, 1, positions).movedim(-1, 0)
    _spare_of(buffers, spare)
    weights = batch_last("softmax", (branches, 1), {}, buffers.take)
    assert weights.data_ptr() == spare.data_ptr() and weights.stride() == spare.stride()
    assert torch.equal(weights, batch_last("softmax", (branches, 1), {}))  # as without the spare
    torch.testing.assert_close(weights, torch.softmax(branches, 1), rtol=1e-6, atol=1e-7)
    with torch.enable_grad():  # never under autograd
        _spare_of(buffers, torch.empty(3, 4, 1, 1, positions).movedim(-1, 0))
        grad_in = branches.clone().requires_grad_()
        assert batch_last("softmax", (grad_in, 1), {}, buffers.take).grad_fn is not None
    buffers.clear()


def test_a_spare_of_as_many_elements_serves_any_dense_layout():
    # A gate's (B, C, 1, 1) values, laid out channel first, serve a (B, C) product: same memory.
    buffers = SpareBuffers()
    spare = torch.empty(5, 1, 1, 40).movedim(-1, 0)  # (40, 5, 1, 1), positions fastest
    _spare_of(buffers, spare)
    assert buffers.take((40, 5), (1, 41), torch.float32, spare.device) is None  # not dense: refused
    assert buffers.take((40, 6), (1, 40), torch.float32, spare.device) is None  # more elements
    assert buffers.take((40, 5), (1, 40), torch.float64, spare.device) is None  # another dtype
    got = buffers.take((40, 5), (1, 40), torch.float32, spare.device)
    assert got is not None and got.data_ptr() == spare.data_ptr() and got.shape == (40, 5) and got.stride() == (1, 40)
    a, b = torch.randn(5, 40).t(), torch.randn(5, 40).t()
    _spare_of(buffers, torch.empty(5, 1, 40).movedim(-1, 0))  # (40, 5, 1)
    out = buffers.compute_into("__mul__", (a, b), {}, (40, 5), torch.float32)
    assert out is not None and torch.equal(out, a * b) and out.stride() == a.stride()


def test_a_buffer_taken_and_not_written_is_spare_again_once_given_back():
    buffers = SpareBuffers()
    spare = torch.empty(3, 7)
    _spare_of(buffers, spare)
    got = buffers.take((3, 7), (7, 1), torch.float32, spare.device)
    assert got is not None and buffers.take((3, 7), (7, 1), torch.float32, spare.device) is None  # taken
    buffers.give_back(got)
    again = buffers.take((3, 7), (7, 1), torch.float32, spare.device)
    assert again is not None and again.data_ptr() == spare.data_ptr()


# --- buffers given back after in-place calls; whole models reusing buffers keep their numbers


def test_a_value_changed_in_place_gives_its_buffer_back_when_its_real_tensor_dies():
    x = torch.randn(1, 4, 40, 50)
    values = PooledValues()
    y = values.start(x.mean((2, 3), keepdim=True), window_sums(x, 3) / 9, x.shape[-2:])
    z = values.handle(torch.sigmoid, (), (y,), {})
    local = values.local(z)
    layout = (tuple(local.shape), local.stride(), local.dtype, local.device)
    address = local.untyped_storage().data_ptr()
    assert values.handle(torch.Tensor.relu_, (), (z,), {}) is z  # tracked again, the same buffer
    del y, z, local
    gc.collect()
    taken = [values.spare.take(*layout) for _ in range(2)]  # y's buffer, and z's
    assert address in [t.untyped_storage().data_ptr() for t in taken if t is not None]


def _two_gates() -> torch.nn.Module:
    """Two squeeze-excitation gates (Linear layers, an in-place ReLU) one after the other."""
    torch.manual_seed(3)
    return torch.nn.Sequential(SELayer(8), SELayer(8)).eval()


def test_a_converted_model_reusing_buffers_gives_the_numbers_of_one_that_never_does(monkeypatch):
    import tlc

    # float64: the gates' Linear layers and sigmoids are computed call by call (in float32 the
    # last layer and sigmoid wait for the multiply and make no gate-sized maps to reuse).
    converted, _ = tlc.convert(_two_gates().double(), train_size=24, in_channels=8)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 8, 201, 243, generator=g, dtype=torch.float64)
    b = torch.rand(2, 8, 201, 243, generator=g, dtype=torch.float64) * 3
    taken = []
    real_take = SpareBuffers.take

    def counted_take(self, *args):
        got = real_take(self, *args)
        taken.append(got is not None)
        return got

    with torch.no_grad():
        monkeypatch.setattr(SpareBuffers, "take", counted_take)
        out_a, out_b = converted(a), converted(b)
        assert any(taken)  # the second gate computed into the first one's buffers
        # The reference: no buffer ever reused, every result a new tensor.
        monkeypatch.setattr(SpareBuffers, "take", lambda self, *args: None)
        monkeypatch.setattr(SpareBuffers, "compute_into", lambda self, *args: None)
        ref_a, ref_b = converted(a), converted(b)
    assert torch.equal(out_a, ref_a) and torch.equal(out_b, ref_b)
    assert not torch.equal(out_a[:, :, :100], out_b[:, :, :100])


def test_concurrent_forwards_of_one_converted_model_share_no_buffer():
    import threading

    import tlc

    converted, _ = tlc.convert(_two_gates(), train_size=24, in_channels=8)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.rand(1, 8, 200, 240, generator=g) * (i + 1) for i in range(2)]
    with torch.no_grad():
        expected = [copy.deepcopy(converted)(x) for x in inputs]
    wrong = []

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(6):
                if not torch.equal(converted(inputs[i]), expected[i]):
                    wrong.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
