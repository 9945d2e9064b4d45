"""Weight-space interpolation with the pre-trained start (``train.interpolate=auto``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import prepare_synthetic
from safetensors.torch import load_file
from test_pretrain import TINY, TUNE
from torch import nn

from unisrec.cli import main
from unisrec.finetune import FINETUNED_WEIGHTS, finetune
from unisrec.interpolate import GRID, choose_interpolation, snapshot


def test_the_best_alpha_on_validation_is_kept() -> None:
    model = nn.Linear(3, 2)
    start = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # fine-tuned: every weight 1, the start 0; the score peaks where the weights are 0.3
    seen: list[float] = []

    def validate() -> dict[str, float]:
        seen.append(float(model.weight[0, 0].detach()))
        return {"ndcg@10": -(float(model.weight.detach().mean()) - 0.3) ** 2, "recall@10": 0.0}

    alpha, scores = choose_interpolation(model, start, validate, "ndcg@10")
    assert alpha == 0.25 and seen == list(GRID)  # alpha 1 (the fine-tuned weights) first, then towards the start
    assert list(scores) == ["1", "0.75", "0.5", "0.25", "0"]
    assert scores["0.25"] == pytest.approx(-(0.05**2))
    torch.testing.assert_close(model.weight, torch.full((2, 3), 0.25), rtol=0, atol=0)
    torch.testing.assert_close(model.bias, torch.full((2,), 0.25), rtol=0, atol=0)

    # every alpha scores the same: the fine-tuned weights stay, bit for bit
    tuned = snapshot(model, [name for name, _ in model.named_parameters()])
    alpha, _ = choose_interpolation(model, start, lambda: {"ndcg@10": 0.5}, "ndcg@10")
    assert alpha == 1.0
    for name, p in model.named_parameters():
        assert torch.equal(p, tuned[name])
    with pytest.raises(ValueError, match="no transferred parameter"):
        choose_interpolation(model, {}, lambda: {"ndcg@10": 0.5}, "ndcg@10")


def test_snapshot_copies_only_the_named_parameters() -> None:
    model = nn.Linear(2, 2)
    copy = snapshot(model, ["weight", "absent"])
    assert list(copy) == ["weight"]
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(copy["weight"], model.weight)  # a copy, not a view


def test_finetune_interpolates_with_the_pretrained_model(tmp_path: Path, tiny_lm_dir: Path) -> None:
    domains = [prepare_synthetic(tmp_path / "a", seed=1), prepare_synthetic(tmp_path / "b", seed=2, n_items=25)]
    pre = tmp_path / "pre"
    # on the CPU wherever the tests run: the plain and the mixed run must train bit for bit alike, which a GPU's
    # atomic additions do not promise (on an H200, where train.device=auto chose the GPU, this test failed; its
    # message was cut from the output, so that this was the cause is likely, not shown)
    on_cpu = ["--train.device=cpu"]
    assert main(["pretrain", *map(str, domains), "--out", str(pre), "--epochs", "1", "--seed", "3",
                 "--text-model", str(tiny_lm_dir), *TINY, *on_cpu]) == 0
    target = prepare_synthetic(tmp_path / "target", seed=9, n_items=20)
    common = [*TUNE, *(o[2:] for o in on_cpu), "train.epochs=3", "model.repeat_bias=true"]
    plain = finetune(target, "transductive", tmp_path / "plain", init=pre,
                     overrides=[*common, "train.interpolate=off"])
    mixed = finetune(target, "transductive", tmp_path / "mixed", init=pre, overrides=common)  # auto: the default
    assert plain["interpolation"] is None and not (tmp_path / "plain" / FINETUNED_WEIGHTS).exists()

    record = mixed["interpolation"]
    assert record is not None and record["metric"] == "ndcg@10"
    assert list(record["valid"]) == ["1", "0.75", "0.5", "0.25", "0"]
    alpha = record["alpha"]
    assert record["valid"][f"{alpha:g}"] == max(record["valid"].values())
    assert len(set(record["valid"].values())) > 1  # the grid scored different weights
    assert mixed["valid"]["ndcg@10"] == pytest.approx(record["valid"][f"{alpha:g}"], abs=1e-12)  # the kept weights
    assert record["valid"]["1"] == pytest.approx(plain["valid"]["ndcg@10"], abs=1e-12)  # alpha 1: the plain run

    started = load_file(str(pre / "model.safetensors"))
    tuned = load_file(str(tmp_path / "mixed" / FINETUNED_WEIGHTS))
    kept = load_file(str(tmp_path / "mixed" / "model.safetensors"))
    for name, value in load_file(str(tmp_path / "plain" / "model.safetensors")).items():
        assert torch.equal(tuned[name], value), name  # interpolating changes no training step
    for name in mixed["transferred_parameters"]:
        if name != "text_center":
            torch.testing.assert_close(kept[name], torch.lerp(started[name], tuned[name], alpha), msg=name)
    for name in ("item_id.weight", "repeat_weight", "text_center"):  # the catalogue's own: fine-tuned values
        assert torch.equal(kept[name], tuned[name]), name
    saved = json.loads((tmp_path / "mixed" / "metrics.json").read_text())
    assert saved["interpolation"] == record
    assert "train.interpolate=auto" in (tmp_path / "mixed" / "README.md").read_text()

    scratch = finetune(target, "inductive", tmp_path / "scratch", overrides=[*common, "train.interpolate=auto"])
    assert scratch["interpolation"] is None and not (tmp_path / "scratch" / FINETUNED_WEIGHTS).exists()  # no start


def test_fine_tuning_settings_are_refused_by_pretrain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domain = prepare_synthetic(tmp_path / "a", seed=1)
    code = main(["pretrain", str(domain), "--out", str(tmp_path / "pre"), *TINY, "--train.select_start=true"])
    err = capsys.readouterr().err
    assert code == 2 and "train.select_start is a fine-tuning setting (it needs --init)" in err, err
    assert err.count("\n") == 1
    code = main(["pretrain", str(domain), "--out", str(tmp_path / "pre"), *TINY, "--train.history_negatives=offsets"])
    err = capsys.readouterr().err
    assert code == 2 and "train.history_negatives is a fine-tuning setting" in err and err.count("\n") == 1, err
