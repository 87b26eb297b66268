"""Device options shared by the benchmarks: `--device`, `--dtype`, `--tf32`, synced timing, peak
memory, and the device fields every result JSON carries.

- Timing: on CUDA, kernels run asynchronously, so a wall clock around Python calls measures the
  launches; `Timer` records CUDA events around the region and synchronises before reading them
  (the elapsed time then includes every kernel the region queued). On the CPU: `perf_counter`.
- Peak memory: on CUDA `torch.cuda.max_memory_allocated` above the allocation at entry (the
  caching allocator's own reserve is not counted); on the CPU the highest resident set size,
  sampled every 2 ms by a thread, above the level at entry.
- TF32: off unless `--tf32`. TF32 matmuls keep 10 mantissa bits, so float32 results on an
  Ampere-or-newer GPU differ from the CPU's by ~1e-3 relative; the CPU-vs-CUDA checks compare
  with it off. It is a process-wide switch, set here in the benchmark, never in the library.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from typing import NamedTuple

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class DeviceSettings(NamedTuple):
    device: str
    dtype: str
    tf32: bool

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def add_device_arguments(parser: argparse.ArgumentParser, *, dtype: bool = True) -> None:
    """`--device` (and `--dtype`, `--tf32` where the script computes in floating point)."""
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    if dtype:
        # Half precision is not offered: attribution refuses it (rrm_plugin.attribution.forward
        # check_precision), so there is nothing to time.
        parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
        parser.add_argument("--tf32", action="store_true",
                            help="allow TF32 matmuls on CUDA (default off: CPU-equal float32)")


def configure(args: argparse.Namespace) -> DeviceSettings:
    """Check the device exists and set the TF32 switches; the settings of this run."""
    settings = DeviceSettings(args.device, getattr(args, "dtype", "float32"),
                              bool(getattr(args, "tf32", False)))
    if settings.is_cuda:
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
    elif settings.device != "cpu":
        raise SystemExit(f"--device {args.device}: the benchmarks run on cpu or cuda")
    return settings


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def device_fields(settings: DeviceSettings) -> dict:
    """What a result JSON records about where it ran."""
    if settings.is_cuda:
        index = torch.device(settings.device).index or 0
        name = torch.cuda.get_device_name(index)
    else:
        name = platform.processor() or platform.machine()
    return {"device": settings.device, "device_name": name, "dtype": settings.dtype,
            "tf32": settings.tf32, "torch": torch.__version__, "cuda": torch.version.cuda}


class Timer:
    """Seconds of the region; on CUDA from events, after a synchronisation."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> Timer:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)  # earlier work must not count
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            self._end.record()
            torch.cuda.synchronize(self.device)
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of the region above the level at entry: CUDA allocations or CPU RSS."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        self.bytes = self.peak - self.start
