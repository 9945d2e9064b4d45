"""Device names resolve to a device of this machine, or to one clear error before any work."""

from __future__ import annotations

import pytest
import torch

from unisrec.devices import resolve_device
from unisrec.errors import UnisrecError


def test_auto_is_the_gpu_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_names_and_devices_pass_through() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "CPU"])
def test_unknown_names_are_one_clear_error(name: str) -> None:
    with pytest.raises(UnisrecError, match=rf"unknown device '{name}' \(use auto, cpu, cuda or cuda:N\)"):
        resolve_device(name)


def test_a_gpu_this_machine_lacks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(UnisrecError, match="requested but CUDA is not available"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UnisrecError, match=r"device 'cuda:2': this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_devices_torch_knows_but_unisrec_does_not_run_on_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only CUDA was checked: mps without Apple GPUs, meta, xpu or cpu:1 went through and failed deep in torch
    (after the data was loaded and the texts encoded), or, for meta, at the first recommendation."""
    for name in ("meta", "xpu", "hpu"):
        with pytest.raises(UnisrecError, match=rf"^device '{name}': not a device unisrec runs on"):
            resolve_device(name)
    with pytest.raises(UnisrecError, match=r"^device 'cpu:1': the CPU has no index but 0"):
        resolve_device("cpu:1")
    assert resolve_device("cpu:0") == torch.device("cpu", 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UnisrecError, match=r"^device 'mps' requested but MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
