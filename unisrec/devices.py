"""The torch device a device name means (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ...), checked before any work.

Every command that takes a device (``train.device``, ``--device`` of evaluate, recommend, serve and encode, the
Python API's ``device=``) resolves it here, so a name torch does not know, or a GPU this machine does not have, is
one clear error at the start instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import torch

from unisrec.errors import UnisrecError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` = the first CUDA GPU where there is one, else the CPU; any other name must be a device of this
    machine that unisrec runs on: ``cpu``, ``cuda`` / ``cuda:N`` (N below the number of GPUs), ``mps``."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise UnisrecError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N): {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnisrecError(f"device {str(name)!r} requested but CUDA is not available (use cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UnisrecError(f"device {str(name)!r}: this machine has {count} CUDA device(s)")
    elif device.type == "cpu":
        if device.index not in (None, 0):
            raise UnisrecError(f"device {str(name)!r}: the CPU has no index but 0 (use cpu)")
    elif device.type == "mps":  # Apple GPUs, where this torch has them
        if not torch.backends.mps.is_available():
            raise UnisrecError(f"device {str(name)!r} requested but MPS is not available (use cpu or auto)")
    else:  # xpu, meta, hpu, ...: torch knows the name, but nothing here runs on it (meta has no data at all)
        raise UnisrecError(f"device {str(name)!r}: not a device unisrec runs on (use auto, cpu, cuda, cuda:N or mps)")
    return device
