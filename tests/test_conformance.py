"""Frozen outputs of the reference implementation (../shared/conformance), reproduced."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import tlc
import tlc.archs

from .conftest import CONFORMANCE


def test_primitives(conformance, cases):
    tensors = load_file(conformance / cases["primitives"]["file"])
    for case in cases["primitives"]["cases"]:
        i, window, eps = case["index"], tuple(case["kernel_size"]), case["instnorm_eps"]
        x = tensors[f"avgpool.{i}.input"]
        assert x.shape == tuple(case["shape"])
        mean_error = (tlc.local_mean(x, window) - tensors[f"avgpool.{i}.exact"]).abs().max().item()
        assert mean_error <= 1e-5, (i, mean_error)
        norm = tlc.local_instance_norm(x, window, tensors[f"instnorm.{i}.weight"], tensors[f"instnorm.{i}.bias"], eps)
        norm_error = (norm - tensors[f"instnorm.{i}.output"]).abs().max().item()
        assert norm_error <= 1e-4, (i, norm_error)


def network_case_ids() -> list[str]:
    import json

    path = CONFORMANCE / "cases.json"
    return [c["id"] for c in json.loads(path.read_text())["cases"]] if path.exists() else []


def assert_matches(ours: torch.Tensor, reference: torch.Tensor, effect: float, what: str) -> None:
    """The README's rule: within 1e-5, and within 5% of a real TLC effect (> 2e-5)."""
    error = (ours - reference).abs().max().item()
    assert error <= 1e-5, f"{what}: {error:.3g}"
    if effect > 2e-5:
        assert error <= 0.05 * effect, f"{what}: {error:.3g} vs effect {effect:.3g}"


@pytest.mark.parametrize("case_id", network_case_ids())
def test_network_case(conformance, cases, case_id):
    case = next(c for c in cases["cases"] if c["id"] == case_id)
    model = getattr(tlc.archs, case["arch"])(**case["config"]).eval()
    model.load_state_dict(load_file(conformance / case["weights"]), strict=True)
    settings = case["tlc"]
    local, report = tlc.convert(
        model,
        train_size=tuple(settings["train_size"]),
        base_size=tuple(settings["base_size"]),
        fast=settings["fast_imp"],
    )
    assert report.converted and not report.skipped
    io = load_file(conformance / case["io"])
    for item in case["inputs"]:
        i = item["index"]
        x = io[f"input.{i}"]
        with torch.no_grad():
            plain, converted = model(x), local(x)
        plain = plain if isinstance(plain, (list, tuple)) else [plain]
        converted = converted if isinstance(converted, (list, tuple)) else [converted]
        assert len(plain) == len(converted) == item["n_outputs"]
        for k in range(item["n_outputs"]):
            ref_plain, ref_tlc = io[f"plain.{i}.output.{k}"], io[f"tlc.{i}.output.{k}"]
            effect = (ref_tlc - ref_plain).abs().max().item()
            assert_matches(plain[k], ref_plain, 0.0, f"{case_id} input {i} plain output {k}")
            assert_matches(converted[k], ref_tlc, effect, f"{case_id} input {i} tlc output {k}")
