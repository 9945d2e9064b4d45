"""train.precision=auto: bfloat16 only where the device computes it natively; what a run records; the warnings."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch
from conftest import prepare_synthetic

import unisrec.precision as precision
from unisrec.cli import main
from unisrec.config import RunConfig
from unisrec.errors import ConfigError
from unisrec.precision import (
    cpu_has_native_bfloat16,
    emulated_bfloat16_warning,
    resolve_precision,
    warn_if_emulated,
    with_resolved_precision,
)

CPU = torch.device("cpu")
SMALL = [
    "--model.hidden_size=16", "--model.inner_size=16", "--model.max_seq_len=6", "--model.n_experts=2",
    "--train.batch_size=64", "--train.lr=0.01", "--train.progress=false", "--train.epochs=1",
]


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_is_bfloat16_only_where_native(monkeypatch: pytest.MonkeyPatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("float32", CPU) == "float32"
    assert resolve_precision("bfloat16", CPU) == "bfloat16"  # an explicit choice is honoured either way
    assert resolve_precision("auto", torch.device("meta")) == "float32"  # no bf16 arithmetic known there


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_a_gpu_that_only_emulates_bfloat16_gets_float32(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                       expected: str) -> None:
    asked: list[bool] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native or including_emulation  # e.g. a T4: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert resolve_precision("auto", torch.device("cuda")) == expected
    assert asked == [False]


def test_unknown_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'float16'.*float32, bfloat16, auto"):
        resolve_precision("float16", CPU)
    with pytest.raises(ConfigError, match=r"train\.precision"):
        RunConfig().with_overrides(["train.precision=float16"])
    assert RunConfig().with_overrides(["train.precision=auto"]).train.precision == "auto"


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"),
                    reason="reads the x86 CPU flags of /proc/cpuinfo")
def test_cpu_detection_agrees_with_the_cpu_flags() -> None:
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert flags, "no flags line in /proc/cpuinfo"
    assert cpu_has_native_bfloat16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_explicit_bfloat16_on_emulating_hardware_warns_once_and_runs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    warn_if_emulated("train.precision", "bfloat16", CPU)
    expected = ("warning: train.precision=bfloat16 but this CPU has no AVX512-BF16 or AMX: bfloat16 is emulated "
                "there and runs several times slower than float32 (use train.precision=float32, or auto)")
    assert capsys.readouterr().err == expected + "\n" == emulated_bfloat16_warning("train.precision", CPU) + "\n"
    for quiet in ("float32", "auto"):
        warn_if_emulated("train.precision", quiet, CPU)
    assert capsys.readouterr().err == ""
    config = with_resolved_precision(RunConfig().with_overrides(["train.precision=bfloat16"]), CPU)
    assert config.train.precision == "bfloat16" and capsys.readouterr().err.startswith("warning: train.precision")
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    warn_if_emulated("text.precision", "bfloat16", CPU)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_finetune_records_what_auto_resolved_to(tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], native: bool,
                                                expected: str) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)
    data = prepare_synthetic(tmp_path / "d", n_users=40, n_items=20)
    run = tmp_path / "run"
    code = main(["finetune", str(data), "--mode", "inductive", "--out", str(run), "--text-model", str(tiny_lm_dir),
                 "--pooling", "mean", *SMALL, "--train.precision=auto"])
    assert code == 0
    assert json.loads((run / "run.json").read_text())["config"]["train"]["precision"] == expected
    assert "warning" not in capsys.readouterr().err  # auto never picks an emulated bfloat16


def test_an_emulated_text_precision_warns_once_per_encoder_not_per_batch(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_lm_dir: Path) -> None:
    from unisrec.config import TextConfig
    from unisrec.text_encoder import TextEncoder

    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    encoder = TextEncoder(TextConfig(model=str(tiny_lm_dir), pooling="mean", precision="bfloat16"), batch_size=2)
    for _ in range(3):  # as the recommender encodes new items, chunk by chunk
        assert encoder.encode(["a red pen", "blue ink", "paper"]).shape == (3, encoder.dim)
    assert capsys.readouterr().err.count("warning: text.precision=bfloat16") == 1
