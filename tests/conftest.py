"""Shared fixtures: where the frozen reference vectors live, and dtype-aware tolerances."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"

# Max abs error allowed against a float64 computation, per dtype, for O(1) values.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def no_downloads(tmp_path_factory, monkeypatch):
    """No test downloads anything or reads the user's cache: an empty cache of its own, offline
    (tests/test_download.py turns downloading back on against its own local server)."""
    monkeypatch.setenv("TLC_HOME", str(tmp_path_factory.mktemp("tlc-home")))
    monkeypatch.setenv("TLC_OFFLINE", "1")


@pytest.fixture(scope="session")
def conformance() -> Path:
    """The ../shared/conformance folder (CI always has it; elsewhere its tests are skipped)."""
    if not CONFORMANCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"conformance vectors missing at {CONFORMANCE}")
        pytest.skip(f"conformance vectors not found at {CONFORMANCE}")
    return CONFORMANCE


@pytest.fixture(scope="session")
def cases(conformance: Path) -> dict:
    return json.loads((conformance / "cases.json").read_text())


def devices() -> list[str]:
    """CPU always; CUDA where present (the GPU machine runs the same suite)."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def spy(monkeypatch):
    """``spy(owner, name)`` replaces ``owner.name`` (a module's function, a class's method) with
    one that calls it and records each call: the list it returns gets ``(args, result)`` per call.
    Undone with the test's ``monkeypatch``."""

    def install(owner: object, name: str) -> list[tuple[tuple, object]]:
        calls: list[tuple[tuple, object]] = []
        original = getattr(owner, name)

        def recorded(*args: object) -> object:
            result = original(*args)
            calls.append((args, result))
            return result

        monkeypatch.setattr(owner, name, recorded)
        return calls

    return install
