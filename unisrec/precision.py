"""Whether a device computes bfloat16 natively, and the training precision ``train.precision=auto`` resolves to.

bfloat16 pays only where the hardware has bf16 arithmetic: CUDA GPUs that support it, and CPUs with AVX512-BF16
or AMX. Elsewhere PyTorch emulates it by converting every operand, and a bfloat16 matmul runs many times slower
than float32: on an AVX2-only CPU (AMD EPYC, one thread) a pre-training step of the recipe took 11.45 s under
bfloat16 autocast against 0.985 s in float32 (medians of 3, ``results/benchmarks/pretrain_profile_avx2.json``;
README "Precision and the CPU"). So ``auto`` is bfloat16 on native hardware and float32 elsewhere, and an explicit
bfloat16 on other hardware is honoured with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import sys
from pathlib import Path
from typing import Literal

import torch

from unisrec.config import TRAIN_PRECISIONS, RunConfig

Precision = Literal["float32", "bfloat16"]


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), as PyTorch's CPU dispatch sees it."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cpu_summary() -> dict[str, object]:
    """What benchmark records say of the CPU they ran on: model name, cores, PyTorch's vector capability, and
    whether it has bf16 arithmetic."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return {"model": names[0] if names else platform.processor(), "cores": os.cpu_count(),
            "capability": torch.backends.cpu.get_cpu_capability(), "native_bfloat16": cpu_has_native_bfloat16()}


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (so that autocast to it saves time rather than costs it)."""
    if device.type == "cuda":  # compute capability 8.0+ (Ampere on); older GPUs only emulate bf16
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_has_native_bfloat16()
    return False


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``train.precision`` on ``device``: ``auto`` -> bfloat16 where it is native, else float32; others as given."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
    return "bfloat16" if precision == "bfloat16" else "float32"


def emulated_bfloat16_warning(setting: str, device: torch.device) -> str:
    """The one-line warning for an explicit bfloat16 ``setting`` on a device without bf16 arithmetic."""
    where = "this CPU has no AVX512-BF16 or AMX" if device.type == "cpu" else f"device {device} has no bf16 support"
    return (f"warning: {setting}=bfloat16 but {where}: bfloat16 is emulated there and runs several times slower "
            f"than float32 (use {setting}=float32{', or auto' if setting == 'train.precision' else ''})")


def warn_if_emulated(setting: str, precision: str, device: torch.device) -> None:
    """Print ``emulated_bfloat16_warning`` to stderr when ``precision`` is bfloat16 and ``device`` lacks it."""
    if precision == "bfloat16" and not native_bfloat16(device):
        print(emulated_bfloat16_warning(setting, device), file=sys.stderr)


def with_resolved_precision(config: RunConfig, device: torch.device) -> RunConfig:
    """``config`` with ``train.precision`` resolved for ``device`` (so that the run records what it ran at),
    warning on stderr first when an explicit bfloat16 will be emulated."""
    warn_if_emulated("train.precision", config.train.precision, device)
    precision = resolve_precision(config.train.precision, device)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, precision=precision))
