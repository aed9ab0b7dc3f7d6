"""Peak memory while a block runs: CUDA peak allocated on a GPU, else resident memory sampled."""

from __future__ import annotations

import os
import threading

import torch


class PeakMemory:
    """Peak memory while the block runs: CUDA peak allocated, or resident memory sampled on Linux."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.peak_mib: float | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif resident_mib() is not None:
            self.peak_mib = resident_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mib = max(self.peak_mib or 0.0, resident_mib() or 0.0)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        elif self.peak_mib is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, resident_mib() or 0.0)


def resident_mib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None
