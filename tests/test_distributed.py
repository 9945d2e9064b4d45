"""Two CPU processes (torchrun, gloo) train exactly like one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import prepare_synthetic
from safetensors.torch import load_file

MODEL_NO_NOISE = [
    "--model.hidden_size=16", "--model.inner_size=16", "--model.max_seq_len=6", "--model.n_experts=2",
    "--model.hidden_dropout=0", "--model.attn_dropout=0", "--model.adaptor_dropout=0",
    "--model.noisy_gating=false", "--train.lr=0.01", "--train.progress=false", "--seed", "5",
]
# float32: the recipe's bfloat16 autocast rounds differently when the batch is split, far above 1e-5
NO_NOISE = [*MODEL_NO_NOISE, "--pretrain.word_drop_variants=2", "--pretrain.lambda_ss=0.5", "--train.precision=float32"]


LIST_THREADS = Path(__file__).with_name("cli_then_list_threads.py")


def _run(args: list[str], nproc: int) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "unisrec"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(LIST_THREADS)]
    done = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if nproc > 1 and Path("/proc/self/task").is_dir():
        # each rank ended its process group before exit: no gloo thread is left to abort the interpreter's exit
        for rank in range(nproc):
            assert f"gloo threads left on rank {rank}: []" in done.stderr, done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1, done.stdout  # only the first process prints the summary
    return json.loads(reports[0])


@pytest.mark.parametrize(("false_negatives", "batch_size", "steps"), [
    ("remove", 80, 3), ("zero_logit", 80, 3),
    ("remove", 84, 4),  # the 4th global batch holds one window: one process steps with a placeholder
])
def test_two_processes_equal_one(tmp_path: Path, tiny_lm_dir: Path, false_negatives: str, batch_size: int,
                                 steps: int) -> None:
    domains = [str(prepare_synthetic(tmp_path / "a", seed=1)), str(prepare_synthetic(tmp_path / "b", seed=2))]
    common = [*domains, "--text-model", str(tiny_lm_dir), "--max-steps", str(steps), *NO_NOISE,
              f"--train.batch_size={batch_size}", f"--pretrain.false_negatives={false_negatives}"]
    one = _run(["pretrain", *common, "--out", str(tmp_path / "one")], 1)
    two = _run(["pretrain", *common, "--out", str(tmp_path / "two")], 2)
    for term in ("loss", "si", "ss"):
        assert two["train"][term] == pytest.approx(one["train"][term], rel=1e-5), term  # type: ignore[index]
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    # 3 Adam steps of lr 0.01 move weights by up to 0.03; a missing gradient synchronisation shows at
    # that scale, float reduction order far below it.
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize(("repeat_bias", "batch_size", "atol", "negatives"), [
    (False, 40, 1e-4, 0), (True, 40, 1e-4, 0),
    (True, 34, 1e-4, 0),  # two global batches of one window: one process steps with a placeholder
    # a batch of 3 windows whose first holds over half of the targets: one window each, no empty share; twice the
    # steps of batch 40, and Adam's near-zero denominators carry the summation order's rounding to 1.4e-4 on the
    # attention weights (the metrics still agree to 1e-9)
    (False, 20, 5e-4, 0),
    # train.negatives: each process adapts its own share's items, both draw the same negatives
    (False, 40, 1e-4, 8), (False, 34, 1e-4, 8),
    # train.batch_negatives: the whole step's items join the draws in each process, whatever its share
    (False, 40, 1e-4, "8+batch"), (False, 34, 1e-4, "8+batch"),
])
def test_finetune_two_processes_equal_one(tmp_path: Path, tiny_lm_dir: Path, repeat_bias: bool,
                                          batch_size: int, atol: float, negatives: int | str) -> None:
    data = str(prepare_synthetic(tmp_path / "d", seed=4))
    mixed = isinstance(negatives, str)
    negatives = int(str(negatives).removesuffix("+batch"))
    common = ["finetune", data, "--mode", "transductive", "--epochs", "2", "--text-model", str(tiny_lm_dir),
              *MODEL_NO_NOISE, f"--train.batch_size={batch_size}", f"--model.repeat_bias={str(repeat_bias).lower()}",
              f"--train.negatives={negatives}", f"--train.batch_negatives={str(mixed).lower()}"]
    one = _run([*common, "--out", str(tmp_path / "one")], 1)
    two = _run([*common, "--out", str(tmp_path / "two")], 2)
    for split in ("valid", "test"):
        for metric, value in one[split].items():  # type: ignore[attr-defined]
            assert two[split][metric] == pytest.approx(value, abs=1e-9), (split, metric)  # type: ignore[index]
    for run in ("one", "two"):  # the setting was in force, not ignored
        train = json.loads((tmp_path / run / "run.json").read_text())["config"]["train"]
        assert (train["negatives"], train["batch_negatives"]) == (negatives, mixed)
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    # two epochs of Adam at lr 0.01 move weights by ~0.1; float reduction order leaves ~1e-5
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=atol, msg=name)


def test_textknn_under_two_processes_equals_one(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """Nothing trains in text kNN: torchrun wrapped it for gradient synchronisation anyway, and the wrapper refused
    a model without trainable weights (a traceback on every rank)."""
    data = str(prepare_synthetic(tmp_path / "d", seed=4))
    common = ["finetune", data, "--mode", "textknn", "--text-model", str(tiny_lm_dir), *MODEL_NO_NOISE]
    one = _run([*common, "--out", str(tmp_path / "one")], 1)
    two = _run([*common, "--out", str(tmp_path / "two")], 2)
    assert two["test"] == one["test"] and two["valid"] == one["valid"]


def test_two_processes_replace_a_run_a_kill_left_aside_in_staging(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """Killed between --overwrite's renames (the old run aside, nothing at --out), then run again with --overwrite
    under torchrun: rank 0 restores the old run and picks the staging folder; every rank must train there
    (``Distributed.from_main``), not into the restored run."""
    data = str(prepare_synthetic(tmp_path / "d", seed=4))
    out = tmp_path / "run"
    common = ["finetune", data, "--mode", "transductive", "--text-model", str(tiny_lm_dir), *MODEL_NO_NOISE,
              "--train.batch_size=40", "--out", str(out)]
    _run([*common, "--epochs", "1"], 1)
    out.rename(tmp_path / ".run.replaced")
    _run([*common, "--epochs", "2", "--overwrite"], 2)
    assert json.loads((out / "run.json").read_text())["config"]["train"]["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (out / "train.log").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == [".run.lock"]


def _gather_rows_on_rank(rank: int, store: str, out_dir: str) -> None:
    from unisrec.distributed import Distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dist = Distributed(rank=rank, world_size=2)
        rows = 3 if rank == 0 else 1  # unequal rows: padded to 3, gathered, trimmed
        x = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2).add(10 * rank).requires_grad_()
        ids = torch.arange(rows) + 100 * rank
        (xs, all_ids), first = dist.gather_rows(x, ids)
        (xs * (rank + 1)).sum().backward()  # rank r weighs every gathered row by r + 1
        assert x.grad is not None
        result = {"xs": xs.tolist(), "ids": all_ids.tolist(), "first": first, "grad": x.grad.tolist(),
                  "ids_grad": all_ids.requires_grad}
        Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def test_gather_rows_two_processes(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_gather_rows_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    for got in ranks:  # every rank holds rank 0's 3 rows then rank 1's 1, ids alike
        assert got["xs"] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [10.0, 11.0]]
        assert got["ids"] == [0, 1, 2, 100]
        assert got["ids_grad"] is False
    assert [got["first"] for got in ranks] == [0, 3]
    # each rank's rows get the gradient of both ranks' losses, 1 + 2, the padding none of it
    assert ranks[0]["grad"] == [[3.0, 3.0]] * 3
    assert ranks[1]["grad"] == [[3.0, 3.0]]


def test_gather_rows_one_process() -> None:
    from unisrec.distributed import Distributed

    x, ids = torch.ones(2, 3), torch.tensor([4, 5])
    (same_x, same_ids), first = Distributed.single().gather_rows(x, ids)
    assert same_x is x and same_ids is ids and first == 0
    with pytest.raises(ValueError, match=r"\[2, 3\] rows"):
        Distributed.single().gather_rows(x, torch.arange(3))


def _resume_on_rank(rank: int, store: str, out_dir: str) -> None:
    """Train 6 steps at once, then 3 steps, a checkpoint and 3 more from it: with dropout, rank 1 draws its own
    masks (its share of each batch is larger), so the resumed run equals the uninterrupted one only if every rank
    takes back its own random state."""
    import numpy as np

    from unisrec.config import TrainConfig
    from unisrec.distributed import Distributed, _import_collectives_before_init
    from unisrec.train import Task, fit

    _import_collectives_before_init()  # as Distributed.from_env does: DDP leaves no gloo thread to abort the exit
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dist = Distributed(rank=rank, world_size=2)
        config = TrainConfig(epochs=2, lr=0.05, warmup_steps=0, schedule="constant", progress=False)

        def run(max_steps: int, run_dir: Path | None, checkpoint_every: int) -> tuple[dict[str, torch.Tensor],
                                                                                     list[float]]:
            torch.manual_seed(0)  # the same initial weights on both ranks
            model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
            torch.manual_seed(100 + rank)  # what a fresh process would hold: a resumed run must not keep it

            def batches(epoch: int) -> Iterator[torch.Tensor]:
                for step in range(4):
                    rows = np.random.default_rng([epoch, step, rank]).normal(size=(3 + 5 * rank, 4))  # (B_r, 4)
                    yield torch.tensor(rows, dtype=torch.float32)

            def loss(x: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"loss": wrapped(x).sub(1.0).pow(2).mean()}

            state = fit(model, Task(batches, 4, loss), config, run_dir, device=torch.device("cpu"),
                        max_steps=max_steps, checkpoint_every=checkpoint_every, dist=dist)
            losses = [r["train_loss"] for r in state.history if not r.get("partial")]  # means over both ranks
            return {k: v.clone() for k, v in model.state_dict().items()}, losses

        reference, reference_losses = run(6, None, 0)
        run_dir = Path(out_dir, "run")
        run_dir.mkdir(exist_ok=True)
        run(3, run_dir, 1)  # stops inside epoch 1 after its checkpoint
        resumed, resumed_losses = run(6, run_dir, 1)
        gaps = {k: float((resumed[k] - reference[k]).abs().max()) for k in reference}
        # the epoch the kill fell in: rank 1 had added rank 0's sums of its first 3 steps to its own
        gaps["train_loss"] = max(abs(a - b) for a, b in zip(resumed_losses, reference_losses, strict=True))
        Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(gaps))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_resume_with_each_ranks_own_random_state(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_resume_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        gaps = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert gaps and all(gap == 0.0 for gap in gaps.values()), (rank, gaps)
    saved = load_file(str(tmp_path / "run" / "checkpoint" / "state.safetensors"))
    assert {k for k in saved if k.startswith("rng/rank")} == {"rng/rank0/torch", "rng/rank1/torch"}
    assert not torch.equal(saved["rng/rank0/torch"], saved["rng/rank1/torch"])  # the ranks' draws did differ


def _stop_on_rank(rank: int, store: str, out_dir: str) -> None:
    """Each rank's validation differs (as nondeterministic GPU kernels can make it): rank 0's improves every epoch,
    rank 1's never. Each rank decided alone, rank 1 stopped after its patience and rank 0 waited forever in the
    next step's gradient exchange; rank 0's score now decides for both."""
    from unisrec.config import TrainConfig
    from unisrec.distributed import Distributed, _import_collectives_before_init
    from unisrec.train import Task, fit

    _import_collectives_before_init()
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dist = Distributed(rank=rank, world_size=2)
        model = torch.nn.Linear(2, 1)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        epochs_seen: list[int] = []

        def validate() -> dict[str, float]:
            epochs_seen.append(len(epochs_seen) + 1)
            return {"ndcg@10": 0.1 * len(epochs_seen) if rank == 0 else 1.0 - 0.1 * len(epochs_seen)}

        def batches(epoch: int) -> Iterator[torch.Tensor]:
            yield torch.ones(2, 2)

        def loss(x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": wrapped(x).pow(2).mean()}

        config = TrainConfig(epochs=4, patience=1, lr=0.01, progress=False)
        state = fit(model, Task(batches, 1, loss, validate=validate), config, None, device=torch.device("cpu"),
                    dist=dist)
        Path(out_dir, f"rank-{rank}.json").write_text(json.dumps([state.epoch, state.best_epoch]))
    finally:
        torch.distributed.destroy_process_group()


def test_every_rank_stops_and_keeps_the_best_epoch_by_rank_0s_validation(tmp_path: Path) -> None:
    context = torch.multiprocessing.spawn(_stop_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
                                          join=False)
    deadline = 120.0
    while not context.join(timeout=1.0):
        deadline -= 1.0
        if deadline <= 0:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank waited forever: the ranks decided apart")
    assert [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)] == [[4, 4], [4, 4]]


def test_a_checkpoint_of_another_number_of_ranks_restores_the_saving_process_state() -> None:
    from unisrec.distributed import Distributed
    from unisrec.train import _restore_random_states, random_states

    torch.manual_seed(1)
    saved = random_states(Distributed.single(), torch.device("cpu"))
    assert set(saved) <= {"rng/torch"} | {f"rng/cuda{i}" for i in range(16)}  # one process: its own state only
    expected = {"saving": torch.rand(3)}
    torch.manual_seed(2)  # the states of a two-process run's ranks
    saved |= {"rng/rank0/torch": torch.get_rng_state()}
    torch.rand(5)
    saved |= {"rng/rank1/torch": torch.get_rng_state()}
    expected["rank1"] = torch.rand(3)
    # (no process group needed: restoring is local) one process, or three, take the saving process's; rank 1 of
    # two takes its own
    for dist, which in ((Distributed.single(), "saving"), (Distributed(rank=1, world_size=3), "saving"),
                        (Distributed(rank=1, world_size=2), "rank1")):
        torch.manual_seed(99)
        _restore_random_states(saved, dist, torch.device("cpu"))
        assert torch.equal(torch.rand(3), expected[which]), (dist, which)
