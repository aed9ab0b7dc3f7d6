"""The README's Python examples run as written, on a small model of our own.

Names an example takes as given (``model``, a user's ``MyGlobalOp`` and ``MyLocalOp``) are defined
here; everything else comes from the example itself, executed in order in one namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

import tlc

README = Path(__file__).resolve().parents[1] / "README.md"


class MyGlobalOp(nn.Module):
    """A user's global op: the map minus its spatial mean."""

    def forward(self, x):
        return x - x.mean((2, 3), keepdim=True)


class MyLocalOp(nn.Module):
    def __init__(self, window):
        super().__init__()
        self.window = window

    def forward(self, x):
        return x - tlc.local_mean(x, self.window)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_examples_run(capsys):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), MyGlobalOp(), nn.Conv2d(8, 3, 1))
    namespace = {"model": model, "MyGlobalOp": MyGlobalOp, "MyLocalOp": MyLocalOp}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    printed = capsys.readouterr().out
    assert "TLC conversion: train 256x256, base 384x384 (exact)" in printed
    # The first example made the instance norm local; the last one's user rule took the user's op.
    assert isinstance(namespace["model"][1], tlc.LocalInstanceNorm2d)
    assert [op.rule for op in namespace["report"].converted if not op.location] == ["my-op"]
    assert isinstance(namespace["model"][2], MyLocalOp) and namespace["model"][2].window == (384, 384)


def test_functional_doc_example_prints_what_the_doc_shows(tmp_path, monkeypatch, capsys):
    """docs/functional.md: net.py as shown, converted, prints the report the doc shows."""
    text = (README.parent / "docs" / "functional.md").read_text()
    net, call = python_blocks(text)[:2]
    shown = re.search(r"^```\n(TLC conversion:.*?)^```", text, flags=re.S | re.M).group(1)
    (tmp_path / "net.py").write_text(net)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"tlc": tlc}
    exec(compile("from net import Net\n" + call, "docs/functional.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    # The deviation's last digits depend on the machine; everything else must be as shown.
    strip = lambda t: re.sub(r"deviation at the training size \S+", "", t).strip()  # noqa: E731
    assert strip(printed) == strip(shown)
