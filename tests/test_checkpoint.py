"""Model files: exact round trips, no pickle anywhere, and loading errors that name what differs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unisrec import __version__
from unisrec.config import ModelConfig
from unisrec.errors import UnisrecError
from unisrec.model import UniSRec
from unisrec.recommend import Catalogue, Recommender


class _TinySizes(TypedDict):
    """The ModelConfig keyword arguments of TINY."""

    hidden_size: int
    inner_size: int
    n_heads: int
    max_seq_len: int
    n_experts: int


TINY: _TinySizes = {"hidden_size": 8, "inner_size": 8, "n_heads": 2, "max_seq_len": 5, "n_experts": 2}


def _model(item_repr: str = "text", n_items: int = 12, dim: int = 6) -> Recommender:
    """A random UniSRec with a catalogue m0.. ("movie 0", ...), as a Recommender."""
    torch.manual_seed(0)
    config = ModelConfig(item_repr=item_repr, **TINY)  # type: ignore[arg-type]
    text = torch.randn(n_items, dim) if item_repr != "id" else None
    model = UniSRec(config, n_items, text)
    return Recommender(model, Catalogue([f"m{i}" for i in range(n_items)], [f"movie {i}" for i in range(n_items)]))


@pytest.mark.parametrize("item_repr", ["text", "text+id", "id"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, item_repr: str) -> None:
    recommender = _model(item_repr)
    recommender.model.eval()
    recommender.save_pretrained(tmp_path / "m")
    loaded = Recommender.from_pretrained(tmp_path / "m")
    assert not loaded.model.training and isinstance(loaded.model, UniSRec)
    for (name, a), b in zip(recommender.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    histories = [["m1", "m2", "m3"], ["m7"]]
    assert loaded.recommend_histories(histories, k=5).equals(recommender.recommend_histories(histories, k=5))
    assert loaded.catalogue.texts[3] == "movie 3"


def test_saved_files_are_json_safetensors_parquet_only(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["config.json", "items.parquet", "items.safetensors", "model.safetensors"]
    for path in (tmp_path / "m").iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{path.name} looks like a pickle"  # pickle protocol 2+ starts with 0x80
    assert (tmp_path / "m" / "items.parquet").read_bytes()[:4] == b"PAR1"
    json.loads((tmp_path / "m" / "config.json").read_text())


def _edit_config(folder: Path, edit: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)  # type: ignore[operator]
    path.write_text(json.dumps(config))


def test_other_format_version_is_refused_with_versions(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")

    def older(config: dict) -> None:
        config.update(format_version=0, unisrec_version="0.0.1")

    _edit_config(tmp_path / "m", older)
    expected = (f"{tmp_path / 'm' / 'config.json'}: model format version 0 (written by unisrec 0.0.1); "
                f"this unisrec {__version__} reads version 1")
    with pytest.raises(UnisrecError, match=f"^{re.escape(expected)}$"):
        Recommender.from_pretrained(tmp_path / "m")


def test_unknown_and_missing_model_settings_are_named(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")

    def differs(config: dict) -> None:
        config["unisrec_version"] = "9.9.9"
        config["model"]["use_magic"] = True
        del config["model"]["temperature"], config["model"]["n_experts"]

    _edit_config(tmp_path / "m", differs)
    expected = (f"{tmp_path / 'm' / 'config.json'} (written by unisrec 9.9.9; this is unisrec {__version__}): "
                "the model configuration differs from this version: unknown model setting(s) use_magic; "
                "missing model setting(s) n_experts, temperature")
    with pytest.raises(UnisrecError, match=f"^{re.escape(expected)}$"):
        Recommender.from_pretrained(tmp_path / "m")


def test_missing_top_level_keys_are_named(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", lambda c: c.pop("n_items"))
    with pytest.raises(UnisrecError, match=r"config.json \(written by unisrec .*\): missing key\(s\) n_items$"):
        Recommender.from_pretrained(tmp_path / "m")


def test_weights_of_another_configuration_name_the_tensors(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", lambda c: c["model"].update(inner_size=4))  # weights were saved with 8
    with pytest.raises(UnisrecError) as info:
        Recommender.from_pretrained(tmp_path / "m")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm' / 'model.safetensors'}: weights do not match the configuration: ")
    assert "encoder.layers.0.ff1.weight has shape (8, 8), expected (4, 8)" in message
    assert "encoder.layers.1.ff2.weight has shape (8, 8), expected (8, 4)" in message


def test_missing_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    weights["extra.weight"] = weights.pop("input_norm.bias")
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(UnisrecError, match=r"missing input_norm\.bias; unexpected extra\.weight$"):
        Recommender.from_pretrained(tmp_path / "m")


def test_item_vectors_of_another_shape_are_refused(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")
    save_file({"item_text": torch.zeros(11, 6)}, str(tmp_path / "m" / "items.safetensors"))
    with pytest.raises(UnisrecError, match=r"item_text has shape \(11, 6\), config.json says \(12, 6\)$"):
        Recommender.from_pretrained(tmp_path / "m")


def test_a_save_killed_midway_is_not_taken_for_one_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save writes its files one by one: killed after the new weights, the folder held them beside the old item
    vectors and list, of the same shapes, and loaded as one model without a word."""
    import unisrec.checkpoint as checkpoint

    _model().save_pretrained(tmp_path / "m")
    other = _model()
    with torch.no_grad():
        other.model.item_text.mul_(-1)  # another catalogue of the same size
        for parameter in other.model.parameters():
            parameter.add_(1.0)
    real = checkpoint.save_tensors

    def killed_after_the_weights(path: Path, *args: Any) -> None:
        if path.name != "model.safetensors":
            raise KeyboardInterrupt
        real(path, *args)

    monkeypatch.setattr(checkpoint, "save_tensors", killed_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(checkpoint, "save_tensors", real)
    with pytest.raises(UnisrecError, match=r"model\.safetensors: from another save than config\.json beside it"):
        Recommender.from_pretrained(tmp_path / "m")
    other.save_pretrained(tmp_path / "m")  # saved again, whole: loads
    assert Recommender.from_pretrained(tmp_path / "m").model.n_items == 12
    # a whole save that writes no item list leaves the earlier one beside it, loadable as before
    from unisrec.checkpoint import save_pretrained

    save_pretrained(other.model, tmp_path / "m")
    assert Recommender.from_pretrained(tmp_path / "m").catalogue.item_ids == [f"m{i}" for i in range(12)]


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(UnisrecError, match=r"config\.json: missing; .* is not a saved unisrec model or run"):
        Recommender.from_pretrained(tmp_path)


def test_added_items_survive_save_and_load(tmp_path: Path) -> None:
    recommender = _model()
    recommender.add_items(["a new movie"], ["new"], vectors=np.ones((1, 6), dtype=np.float32))
    recommender.save_pretrained(tmp_path / "m")
    loaded = Recommender.from_pretrained(tmp_path / "m")
    assert loaded.model.n_items == 13 and loaded.catalogue.item_ids[-1] == "new"
    torch.testing.assert_close(loaded.model.item_text[-1], torch.ones(6))
    assert loaded.recommend_lists([["m1", "new"]], k=3) == recommender.recommend_lists([["m1", "new"]], k=3)


def test_pretrained_model_without_catalogue_recommends_after_add_items(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bare = UniSRec.without_catalogue(ModelConfig(**TINY), 6)  # what `unisrec pretrain` saves
    from unisrec.checkpoint import save_pretrained

    save_pretrained(bare, tmp_path / "pre", extra={"kind": "pretrained"}, save_text=False)
    recommender = Recommender.from_pretrained(tmp_path / "pre")
    with pytest.raises(UnisrecError, match="the catalogue is empty; add items first"):
        recommender.recommend_lists([["x"]])
    recommender.add_items(["one", "two", "three"], ["x", "y", "z"], vectors=torch.randn(3, 6))
    ranked = recommender.recommend_lists([["x"]], k=5)[0]
    assert sorted(r.item_id for r in ranked) == ["y", "z"] and recommender.model.n_items == 3  # zero-shot ranking
    recommender.save_pretrained(tmp_path / "grown")  # it now ranks a catalogue of its own: no longer "pretrained"
    config = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert config["n_items"] == 3 and "kind" not in config


@pytest.mark.parametrize("parts", ["all", "adaptor", "encoder"])
def test_transfer_copies_the_chosen_parts_and_keeps_the_rest_as_initialised(tmp_path: Path, parts: str) -> None:
    from unisrec.checkpoint import load_transferable

    config = ModelConfig(hidden_size=16, inner_size=16, n_heads=2, n_experts=2, max_seq_len=6, last_item_skip=True,
                         skip_gate=True)
    torch.manual_seed(0)
    source = UniSRec(config, 5, torch.randn(5, 8))
    with torch.no_grad():
        source.skip_weight.fill_(-0.75)  # type: ignore[union-attr]  # learned: not its initial value
    (tmp_path / "src").mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "src" / "model.safetensors"))
    torch.manual_seed(1)
    target = UniSRec(config, 7, torch.randn(7, 8))  # another catalogue: only shared parameters can move
    before = {k: v.clone() for k, v in target.state_dict().items()}
    copied = load_transferable(target, tmp_path / "src", parts)
    after, given = target.state_dict(), source.state_dict()
    # the last-item skip's gate weighs the sequence's output: it goes with the encoder
    prefixes = {"all": ("",), "adaptor": ("adaptor.",), "encoder": ("encoder.", "input_norm.", "skip_weight")}[parts]
    assert copied == sorted(k for k in given if k.startswith(prefixes))
    assert any(k.startswith("encoder.") for k in given) and any(k.startswith("adaptor.") for k in given)
    for name in after:
        if name in copied:
            torch.testing.assert_close(after[name], given[name], rtol=0, atol=0)
            assert not torch.equal(after[name], before[name]) or torch.equal(given[name], before[name])
        else:
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)  # its own initial value
    if parts == "adaptor":
        assert not torch.equal(after["encoder.position.weight"], given["encoder.position.weight"])
    if parts == "encoder":
        assert "input_norm.weight" in copied and "skip_weight" in copied
        assert not any(k.startswith("adaptor.") for k in copied)
        assert not torch.equal(after["adaptor.weight"], given["adaptor.weight"])
    with pytest.raises(ValueError, match="unknown transfer parts"):
        load_transferable(target, tmp_path / "src", "position")


def _script(name: str) -> Any:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transfer_parts_probe_combines_pretrained_and_fresh_parts() -> None:
    probe = _script("transfer_parts_probe")
    config = ModelConfig(hidden_size=16, inner_size=16, n_heads=2, n_experts=2, max_seq_len=6)
    text = torch.randn(5, 8)
    torch.manual_seed(0)
    pretrained = UniSRec(config, 5, text)
    torch.manual_seed(1)
    fresh = UniSRec(config, 5, text)
    for prefixes in (("adaptor.",), probe.SEQUENCE_PARTS):
        mixed = probe.combined(pretrained, fresh, prefixes).state_dict()
        for name, value in mixed.items():
            source = pretrained if name.startswith(prefixes) else fresh
            torch.testing.assert_close(value, source.state_dict()[name], rtol=0, atol=0, msg=name)
        assert any(n.startswith(prefixes) for n in mixed) and any(not n.startswith(prefixes) for n in mixed)


def test_interpolation_probe_mixes_the_transferred_parameters_at_the_alpha_validation_prefers(tmp_path: Path) -> None:
    probe = _script("interpolation_probe")
    config = ModelConfig(item_repr="text+id", hidden_size=16, inner_size=16, n_heads=2, n_experts=2, max_seq_len=6)
    text = torch.randn(5, 8)
    torch.manual_seed(0)
    pretrained = UniSRec(config, 5, text)
    (tmp_path / "pre").mkdir()
    weights = {k: v.contiguous() for k, v in pretrained.state_dict().items()}
    save_file(weights, str(tmp_path / "pre" / "model.safetensors"))
    torch.manual_seed(1)
    model = UniSRec(config, 5, text)  # the "fine-tuned" weights
    tuned = {k: v.clone() for k, v in model.state_dict().items()}
    name = "adaptor.weight"
    wanted = torch.lerp(pretrained.state_dict()[name], tuned[name], 0.25)

    def validate() -> dict[str, float]:  # best where the adaptor is a quarter of the way to the fine-tuned one
        return {"ndcg@10": -float((model.state_dict()[name] - wanted).abs().sum())}

    alpha, scores = probe.interpolate_after(model, tmp_path / "pre", "all", validate, "ndcg@10")
    assert alpha == 0.25 and list(scores) == ["1", "0.75", "0.5", "0.25", "0"] and scores["0.25"] == 0.0
    state = model.state_dict()
    for key, value in state.items():
        if key.startswith(("item_id.", "text_center", "repeat_weight")) or not value.is_floating_point():
            torch.testing.assert_close(value, tuned[key], rtol=0, atol=0, msg=key)  # the target's own: kept
        else:
            torch.testing.assert_close(value, torch.lerp(pretrained.state_dict()[key], tuned[key], 0.25), msg=key)
    assert not torch.equal(state["item_id.weight"], pretrained.state_dict()["item_id.weight"])


def test_interpolation_probe_refuses_runs_it_cannot_mix(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "interpolation_probe.py"
    for init, interpolate, message in ((None, "off", "made without --init, nothing to interpolate with"),
                                       ("pre", "auto", "made with train.interpolate=auto; its metrics.json already "
                                                       "holds the interpolation")):
        run = tmp_path / f"run-{interpolate}"
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"data": "d", "init": init, "config": {
            "train": {"interpolate": interpolate, "select_metric": "ndcg@10"}, "eval": {}}}))
        done = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True,
                              env={"PYTHONPATH": str(script.parent.parent), "PATH": ""})
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == f"interpolation_probe: {run}: {message}\n"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(script.parent.parent), "PATH": ""})
    assert done.returncode == 2 and "run.json" in done.stderr and len(done.stderr.splitlines()) == 1


def test_weight_norms_reads_saved_runs_beside_the_library_initialisation(tmp_path: Path) -> None:
    from unisrec.checkpoint import save_pretrained

    probe = _script("weight_norms")
    config = ModelConfig(item_repr="text+id", hidden_size=16, inner_size=16, n_heads=2, n_experts=2, max_seq_len=6)
    text = torch.randn(5, 8)
    torch.manual_seed(3)
    model = UniSRec(config, 5, text)
    with torch.no_grad():
        model.encoder.position.weight.mul_(4.0)  # "trained": four times its initial norm
    save_pretrained(model, tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    norms = probe.tensor_norms(saved)
    assert "item_text" not in norms and "text_center" not in norms  # buffers, not trained
    assert norms["encoder.position.weight"] == round(float(saved["encoder.position.weight"].double().norm()), 4)
    init = probe.tensor_norms(probe.fresh_tensors(tmp_path / "run", 3, saved))
    assert set(init) == set(norms)  # the same architecture, the ID table's size taken from the saved one
    assert norms["encoder.position.weight"] == pytest.approx(4 * init["encoder.position.weight"], rel=1e-4)
    assert norms["adaptor.weight"] == init["adaptor.weight"]  # untouched: the seed reproduces the initialisation


def test_skip_probe_scores_the_same_weights_with_the_skip_on_and_off(tmp_path: Path) -> None:
    from dataclasses import replace

    from conftest import prepare_synthetic

    from unisrec.config import EvalConfig
    from unisrec.datasets.processed import load_processed
    from unisrec.evaluate import evaluate

    probe = _script("skip_probe")
    dataset = load_processed(prepare_synthetic(tmp_path / "data", seed=4))
    config = ModelConfig(**TINY, last_item_skip=True)
    text = torch.randn(dataset.n_items, 6)
    torch.manual_seed(0)
    model = UniSRec(config, dataset.n_items, text).eval()
    plain = UniSRec(replace(config, last_item_skip=False), dataset.n_items, text).eval()
    plain.load_state_dict(model.state_dict(), strict=True)  # the skip has no parameter: the same weights load
    result = probe.skip_comparison(model, dataset)
    assert model.config.last_item_skip is True  # put back
    for name, reference in (("skip_on", model), ("skip_off", plain)):
        for split in ("valid", "test"):
            wanted = evaluate(reference, dataset, split, EvalConfig())
            assert result[name][split] == {k: round(v, 6) for k, v in wanted.items()}, (name, split)
    assert result["skip_on"]["valid"] != result["skip_off"]["valid"]  # the skip changes the ranking


def test_skip_probe_refuses_a_model_without_the_skip(tmp_path: Path) -> None:
    import subprocess
    import sys

    from unisrec.checkpoint import save_pretrained

    save_pretrained(UniSRec.without_catalogue(ModelConfig(**TINY), 6), tmp_path / "pre")  # last_item_skip off
    script = Path(__file__).resolve().parent.parent / "scripts" / "skip_probe.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "pre"), str(tmp_path / "data")],
                          capture_output=True, text=True, env={"PYTHONPATH": str(script.parent.parent), "PATH": ""})
    assert done.returncode == 2 and done.stdout == ""
    wanted = f"skip_probe: {tmp_path / 'pre'}: was pre-trained without the last-item skip; nothing to compare\n"
    assert done.stderr == wanted
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "nowhere"), str(tmp_path / "data")],
                          capture_output=True, text=True, env={"PYTHONPATH": str(script.parent.parent), "PATH": ""})
    assert done.returncode == 2 and "config.json: missing" in done.stderr and len(done.stderr.splitlines()) == 1
