"""``unisrec report CONFIG.yaml --out DIR``: run (or reuse) the configured experiments, then write the report.

Layout of DIR::

    data/NAME/                   prepared datasets (with their cached text vectors)
    pretrain/NAME/seed-S/        pre-training runs;  runs/EXPERIMENT/seed-S/  fine-tuning / zero-shot runs
    .../seed-S.json              beside every folder: the settings it was made with (its "spec")

The report itself (report.md, report.json, curves-*.png, long_tail.png, transfer.png) is written into the
results folder, beside the run records it is made from (``unisrec.report_writer``), so that
``--report-only`` regenerates it from the committed records alone.

A run is reused when its spec file equals the spec the config asks for and it finished (metrics.json); an
interrupted run with the same spec is resumed; a run whose spec changed (config edited, or a pre-training
run it starts from changed: specs nest) is trained again from scratch. Runs are planned in config order:
datasets, then each experiment's seeds, each preceded by the pre-training runs it needs.
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import torch

from unisrec.atomic import atomic_write_json
from unisrec.config import (
    RunConfig,
    TextConfig,
    load_config,
    load_config_overrides,
    override,
    with_later_absent,
    without_later_absent,
    without_pretraining,
)
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json
from unisrec.locking import hold_folder, hold_results
from unisrec.pretrain import recipe_config
from unisrec.records import read_record, write_record
from unisrec.report_config import ReportConfig, load_report_config
from unisrec.run_costs import PlannedCost, Recorded, estimate, planned_costs, recorded_costs
from unisrec.runs import staging_dir

Kind = Literal["prepare", "pretrain", "finetune", "zeroshot"]


@dataclass(frozen=True)
class PrepareArgs:
    """``unisrec prepare SOURCE --format FORMAT [--name NAME] --user-core U --item-core I``."""

    source: str
    format: str
    name: str | None
    user_core: int
    item_core: int


@dataclass(frozen=True)
class TrainArgs:
    """A training command (or the zero-shot evaluation): its datasets and settings.

    The settings are those of the command line: ``config_path``'s settings (``--config``, on ``RunConfig()``)
    or without it the command's default (the recipe for pre-training), then ``overrides`` (the report's text
    settings as ``text.*`` first).
    """

    data: tuple[Path, ...]  # dataset folders: several for pre-training, else one
    overrides: tuple[str, ...]
    config_path: Path | None = None
    mode: str | None = None  # finetune --mode
    init: Path | None = None  # the run it starts from (finetune --init, zeroshot)

    def settings(self, kind: Kind) -> tuple[RunConfig, list[str]]:
        """The base config and the overrides on top of it (as ``unisrec finetune`` / ``pretrain`` make them)."""
        if self.config_path is not None:  # the file's pretrain section is the pre-trainings' (as for the CLI)
            from_file = load_config_overrides(self.config_path)
            if kind != "pretrain":
                from_file = without_pretraining(from_file)
            return RunConfig(), [*from_file, *self.overrides]
        return (recipe_config() if kind == "pretrain" else RunConfig()), list(self.overrides)


@dataclass(frozen=True)
class PlannedRun:
    kind: Kind
    name: str  # dataset, pre-training or experiment name
    seed: int | None
    out: Path  # the folder it writes
    spec: dict[str, Any]  # everything its result depends on (JSON-plain)
    args: PrepareArgs | TrainArgs  # how to call it

    @property
    def spec_file(self) -> Path:
        return self.out.with_name(self.out.name + ".json")

    @property
    def done_file(self) -> Path:
        return self.out / ("dataset.json" if self.kind == "prepare" else "metrics.json")

    @property
    def replacing_file(self) -> Path:
        """Present while a stale folder is being replaced: until the new run ends, ``out`` still holds the old one
        (its ``metrics.json`` included), which the spec file already written must not vouch for."""
        return self.out.with_name(self.out.name + ".replacing")

    def status(self) -> Literal["cached", "resume", "new", "stale"]:
        stored = read_json(self.spec_file) if self.spec_file.exists() else None
        if stored is not None and same_recorded_plan(stored, self.spec):  # sources by name, as records
            if self.replacing_file.exists():  # an interrupted replacement: go on replacing (it resumes in staging)
                return "stale"
            return "cached" if self.done_file.exists() else "resume"
        return "stale" if self.out.exists() else "new"

    def command(self) -> str:
        """The equivalent command line (for running it by hand, e.g. on another machine)."""
        a = self.args
        if isinstance(a, PrepareArgs):
            words = ["unisrec", "prepare", a.source, "--format", a.format, "--out", str(self.out)]
            words += ["--name", a.name] if a.name else []
            if a.format != "unisrec":  # a unisrec folder is already filtered: prepare refuses the cores there
                words += ["--user-core", str(a.user_core), "--item-core", str(a.item_core)]
            return shlex.join(words)
        if self.kind == "zeroshot":
            return f"# zero-shot: evaluate {a.init} on {a.data[0]} (Python: unisrec.report.zero_shot_run)"
        if self.kind == "pretrain":
            words = ["unisrec", "pretrain", *map(str, a.data), "--out", str(self.out)]
        else:
            words = ["unisrec", "finetune", str(a.data[0]), "--mode", str(a.mode), "--out", str(self.out)]
            words += ["--init", str(a.init)] if a.init else []
        words += ["--config", str(a.config_path)] if a.config_path else []
        return shlex.join([*words, *(f"--{o}" for o in a.overrides)])


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def plan_runs(config: ReportConfig, out: Path, only: list[str] | None = None) -> list[PlannedRun]:
    """Every run the report needs, in execution order (``only``: these experiments and what they need)."""
    base = load_config(config.resolve(config.config)) if config.config else RunConfig()
    base_spec = _config_spec(base)
    config_path = config.resolve(config.config) if config.config else None
    text_settings = config.text_settings()
    text_overrides = [override(f"text.{key}", value) for key, value in text_settings.items()]
    wanted = _with_dependencies(config, only) if only else {e.name for e in config.experiments}
    runs: list[PlannedRun] = []
    planned: dict[tuple[str, str, int | None], PlannedRun] = {}

    def add(run: PlannedRun) -> PlannedRun:
        key = (run.kind, run.name, run.seed)
        if key not in planned:
            planned[key] = run
            runs.append(run)
        return planned[key]

    data: dict[str, tuple[Path, dict[str, Any]]] = {}
    for name, d in config.datasets.items():
        if d.path is not None:
            data[name] = (config.resolve(d.path), {"path": str(config.resolve(d.path))})
            continue
        assert d.source is not None
        source = config.resolve(d.source, data=True)
        spec = _plain({"source": str(source), "format": d.format, "name": d.name, "core": [d.user_core, d.item_core]})
        data[name] = (out / "data" / name, spec)
    used: set[str] = set()  # datasets to prepare: those of the wanted experiments and their pre-training
    for name in wanted:
        experiment = config.experiment(name)
        used.add(experiment.dataset)
        if experiment.init in config.pretrain:
            used.update(config.pretrain[experiment.init].datasets)
    for name, d in config.datasets.items():
        if d.source is not None and name in used:
            add(PlannedRun("prepare", name, None, data[name][0], {"kind": "prepare", **data[name][1]},
                           PrepareArgs(data[name][1]["source"], d.format, d.name, d.user_core, d.item_core)))

    # pre-training starts from the recipe of `unisrec pretrain` unless the report names a config file
    pre_spec = base_spec if config.config else _config_spec(recipe_config())

    def pretrain_run(name: str, seed: int) -> PlannedRun:
        p = config.pretrain[name]
        s = p.seed if p.seed is not None else seed
        overrides = [*config.overrides, *p.overrides, f"train.seed={s}"]
        spec = {"kind": "pretrain", "datasets": [data[d][1] for d in p.datasets], "overrides": overrides,
                "config": pre_spec, "text": text_settings or None}
        args = TrainArgs(tuple(data[d][0] for d in p.datasets), (*text_overrides, *overrides), config_path)
        return add(PlannedRun("pretrain", name, s, out / "pretrain" / name / f"seed-{s}", _plain(spec), args))

    by_experiment: dict[tuple[str, int], PlannedRun] = {}
    for e in config.experiments:
        if e.name not in wanted:
            continue
        for seed in config.seeds:
            init = None
            if e.init in config.pretrain:
                init = pretrain_run(e.init, seed)
            elif e.init is not None:
                init = by_experiment[(e.init, seed)]
            overrides = [*config.overrides, *e.overrides, f"train.seed={seed}"]
            spec = {"kind": e.command, "dataset": data[e.dataset][1], "mode": e.mode if e.command == "finetune"
                    else None, "init": init.spec if init else None, "overrides": overrides, "config": base_spec,
                    "text": text_settings or None}
            # the shared overrides of pre-training settings are the pre-trainings' (fine-tuning refuses them);
            # the spec keeps them, as it always did, so that runs planned before stay this plan's
            shared = without_pretraining(config.overrides)
            args = TrainArgs((data[e.dataset][0],), (*text_overrides, *shared, *e.overrides, f"train.seed={seed}"),
                             config_path, e.mode, init.out if init else None)
            run = PlannedRun(e.command, e.name, seed, out / "runs" / e.name / f"seed-{seed}", _plain(spec), args)
            by_experiment[(e.name, seed)] = add(run)
    return runs


def resolved_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A run's spec with its base config and overrides replaced by the settings they resolve to (``"settings"``),
    its ``init`` (the run it starts from) likewise: two spellings of one run resolve alike, e.g. a pre-training
    planned on the 2-epoch recipe and the same one planned as ``train.epochs=2`` on a later recipe."""
    resolved = dict(spec)
    if isinstance(spec.get("init"), dict):
        resolved["init"] = resolved_spec(spec["init"])
    if isinstance(spec.get("config"), dict) and isinstance(spec.get("overrides"), list):
        base = RunConfig.from_dict(with_later_absent(spec["config"]), source="spec")  # as it was when written
        config = base.with_overrides(list(spec["overrides"]))
        resolved["settings"] = without_later_absent(config.to_dict())
        del resolved["config"], resolved["overrides"]
    return resolved


def same_plan(stored: dict[str, Any], planned: dict[str, Any]) -> bool:
    """Whether a stored spec (a run folder's spec file, a record's plan) is the planned run: equal, or equal once
    both are resolved (``resolved_spec``; a stored spec that no longer reads as a config is another run)."""
    if stored == planned:
        return True
    try:
        # compared as values, not as text (2 == 2.0 as before the cache)
        return bool(json.loads(_resolved_json(_canonical(stored))) == json.loads(_resolved_json(_canonical(planned))))
    except (UnisrecError, TypeError, ValueError):
        return False


def _without_folders(spec: Any) -> Any:
    """A spec with its data sources' and folders' paths cut to their names (``/data/multi-domain/food`` ->
    ``food``): records made under another data root or on another machine still count as the planned run."""
    if isinstance(spec, dict):
        return {k: Path(v).name if k in ("source", "path") and isinstance(v, str) else _without_folders(v)
                for k, v in spec.items()}
    if isinstance(spec, list):
        return [_without_folders(v) for v in spec]
    return spec


def same_recorded_plan(stored: dict[str, Any], planned: dict[str, Any]) -> bool:
    """Whether a record's plan is the planned run, its data sources and folders compared by name
    (``_without_folders``): a record made under another data root or ``--out`` (another machine, data moved) is
    the same run, not one to train again."""
    return same_plan(_without_folders(stored), _without_folders(planned))


def stale_records(config: ReportConfig, results_dir: Path) -> list[str]:
    """The records whose plan is not the run this config plans now (a config edited since they were made, a
    runner stopped by ``--only`` or ``--budget-minutes`` before it remade them); records without a plan (made by
    hand) are not judged."""
    stale: list[str] = []
    for run in plan_runs(config, results_dir / ".plan"):  # the folder only names runs; specs do not hold it
        name = record_name(run, config) if run.kind != "prepare" else None
        held = read_record(results_dir / f"{name}.json") if name is not None else None
        plan = held.get("plan") if held is not None else None
        if name is not None and isinstance(plan, dict) and not same_recorded_plan(plan, run.spec):
            stale.append(name)
    return stale


def _canonical(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


@functools.lru_cache(maxsize=4096)
def _resolved_json(spec_json: str) -> str:
    """``resolved_spec`` of a spec given as canonical JSON, as canonical JSON; cached (a report compares each planned
    run with its folder's spec and its record's plan at every status check)."""
    return _canonical(resolved_spec(json.loads(spec_json)))


def _config_spec(config: RunConfig) -> dict[str, Any]:
    """A base config in a spec: without its text section while that holds the defaults (the report's own text
    settings are the spec's "text") and without the later settings at their defaults
    (``unisrec.config.without_later_absent``), so that specs written by earlier versions still match."""
    plain = without_later_absent(config.to_dict())
    if config.text == TextConfig():
        plain.pop("text")
    return plain


def _with_dependencies(config: ReportConfig, only: list[str]) -> set[str]:
    names = {e.name for e in config.experiments}
    unknown = sorted(set(only) - names)
    if unknown:
        raise UnisrecError(f"--only: unknown experiment(s) {', '.join(unknown)}")
    wanted, todo = set(), list(only)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            init = config.experiment(name).init
            if init is not None and init in names:
                todo.append(init)
    return wanted


def execute(run: PlannedRun, card: bool = True) -> None:
    """Run one planned run (a stale folder is replaced, an interrupted one resumed); ``card``: a transfer adds its
    result to its pre-trained run's card (not a ``--verify`` rerun)."""
    status = run.status()
    overwrite = status == "stale"
    run.out.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:  # before the new spec, so that an interruption from here on is still seen as a replacement
        atomic_write_json(run.replacing_file, {"replacing": str(run.out), "plan": run.spec_file.name})
    atomic_write_json(run.spec_file, run.spec)
    _run_planned(run, overwrite, card)
    run.replacing_file.unlink(missing_ok=True)


def _run_planned(run: PlannedRun, overwrite: bool, card: bool = True) -> None:
    a = run.args
    if isinstance(a, PrepareArgs):
        from unisrec.datasets import PrepareOptions, prepare

        options = PrepareOptions(user_core=a.user_core, item_core=a.item_core)
        prepare(a.source, a.format, run.out, options=options, name=a.name, overwrite=True)
        return
    config, overrides = a.settings(run.kind)
    if run.kind == "pretrain":
        from unisrec.pretrain import pretrain

        pretrain(list(a.data), run.out, config=config, overrides=overrides, overwrite=overwrite,
                 command=run.command())
    elif run.kind == "finetune":
        from unisrec.finetune import finetune

        assert a.mode is not None
        finetune(a.data[0], a.mode, run.out, config=config, overrides=overrides, init=a.init, overwrite=overwrite,
                 card=card, command=run.command())
    else:
        assert a.init is not None
        if run.out.exists():
            shutil.rmtree(run.out)
        zero_shot_run(a.init, a.data[0], run.out, config.with_overrides(overrides))


def adopt_run(config_path: str | Path, out: str | Path, run_dir: str | Path, *,
              data_root: str | None = None) -> dict[str, Any]:
    """Take a fine-tuning or pre-training run made by hand with the report's own command (``--dry-run`` prints it)
    into ``out``: write its spec file, so that the report records it when it has finished (or resumes it) instead
    of counting it stale and training it again (a pre-training counted stale would be trained again, and every
    fine-tuning from it after it). The folder's ``run.json`` must hold the settings the planned command makes
    (their fingerprint); anything else is an error naming the folder. Returns {"run", "status"}."""
    from unisrec.finetune import finetune_settings
    from unisrec.pretrain import pretrain_settings
    from unisrec.runs import same_settings

    config = load_report_config(config_path, data_root=data_root)
    hold_folder(Path(out))  # not while a report runner writes the same folder
    run_dir = Path(run_dir).resolve()
    matches = [r for r in plan_runs(config, Path(out)) if r.out.resolve() == run_dir]
    if not matches:
        raise UnisrecError(f"{run_dir}: not a run folder that {config_path} plans under {out}")
    run = matches[0]
    a = run.args
    if run.kind not in ("finetune", "pretrain") or not isinstance(a, TrainArgs):
        raise UnisrecError(f"{run_dir}: only fine-tuning and pre-training runs are adopted "
                           f"(this one is a {run.kind} run)")
    made_file = run_dir / "run.json"
    if not made_file.exists():
        raise UnisrecError(f"{made_file}: missing; start the run with the report's command first ({run.command()})")
    made = read_json(made_file)
    base, overrides = a.settings(run.kind)
    if run.kind == "pretrain":
        _, settings = pretrain_settings(list(a.data), base, overrides)
    else:
        assert a.mode is not None  # a planned fine-tuning always has its mode
        _, settings = finetune_settings(a.data[0], a.mode, base, overrides, a.init)
    if not same_settings(made, settings):
        raise UnisrecError(f"{made_file}: its settings differ from the planned command's ({run.command()})")
    atomic_write_json(run.spec_file, run.spec)
    run.replacing_file.unlink(missing_ok=True)  # the folder holds the planned run now, not the one being replaced
    return {"run": str(run.out), "status": run.status()}


def zero_shot_run(init: Path, data_dir: Path, out: Path, config: RunConfig) -> dict[str, Any]:
    """Evaluate a text model on another dataset as is; writes metrics.json and ranks_test.npy to ``out``."""
    from unisrec.analysis import save_ranks
    from unisrec.datasets import load_processed
    from unisrec.devices import resolve_device
    from unisrec.evaluate import final_evaluation, zero_shot_model

    device = resolve_device(config.train.device)
    dataset = load_processed(data_dir)
    model = zero_shot_model(Path(init), dataset).to(device)
    final = final_evaluation(model, dataset, config.eval, device)
    if final.test is None or final.test_ranks is None:  # report configs refuse eval.test=false
        raise UnisrecError(f"{out}: a zero-shot run of a report scores the test split (eval.test=false given)")
    metrics = {"valid": final.valid, "test": final.test, "epochs": 0, "best_epoch": 0,
               "seconds_eval": round(final.seconds, 3), "mode": "zeroshot",
               "seed": config.train.seed, "dataset": dataset.name, "init": str(init),
               "data": str(Path(data_dir).resolve())}  # what run.json holds for a trained run: its record reads it
    out.mkdir(parents=True, exist_ok=True)
    save_ranks(out, final.test_ranks)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def priority_order(runs: list[PlannedRun], seeds: tuple[int, ...] | list[int]) -> list[PlannedRun]:
    """Runs seed-major (every experiment's first seed, then the second, ...), dependencies first.

    Prepare runs come first; a pre-training run goes with the earliest seed of the runs that use it (its own
    position in the plan already precedes them), so a stable sort on (seed rank) keeps every dependency ahead.
    """
    position = {seed: index for index, seed in enumerate(seeds)}
    users: dict[Path, int] = {}
    for run in runs:
        init = run.args.init if isinstance(run.args, TrainArgs) else None
        if init is not None and run.seed is not None:
            first = position.get(run.seed, 0)
            users[Path(init)] = min(users.get(Path(init), first), first)

    def rank(run: PlannedRun) -> int:
        if run.kind == "prepare":
            return -1
        if run.kind == "pretrain":
            return users.get(run.out, position.get(run.seed, 0) if run.seed is not None else 0)
        return position.get(run.seed, 0) if run.seed is not None else 0

    return sorted(runs, key=rank)


def runs_to_execute(runs: list[PlannedRun], recorded: Callable[[PlannedRun], bool]) -> list[PlannedRun]:
    """The runs to execute, in plan order: every training run neither finished in its folder ("cached") nor
    known from a record with the same plan (``recorded``), and what those need whose folder is not finished
    (the pre-training a fine-tuning starts from, the datasets they read), however they are recorded."""
    by_out = {run.out: run for run in runs}
    cached = {run.out for run in runs if run.status() == "cached"}  # each spec file read once
    needed = [r for r in runs if r.kind != "prepare" and r.out not in cached and not recorded(r)]
    chosen: set[Path] = set()
    while needed:
        run = needed.pop()
        if run.out in chosen:
            continue
        chosen.add(run.out)
        needed.extend(by_out[path] for path in _needs(run) - cached if path in by_out)
    return [run for run in runs if run.out in chosen]


def _needs(run: PlannedRun) -> set[Path]:
    """The folders a run reads: its datasets and the run it starts from."""
    if not isinstance(run.args, TrainArgs):
        return set()
    return {Path(p) for p in run.args.data} | ({Path(run.args.init)} if run.args.init is not None else set())


def _init_worker(threads: int) -> None:
    """A run's worker process: ``threads`` torch threads, and it ends with the report that started it."""
    torch.set_num_threads(threads)
    stop_with_parent()


def stop_with_parent(interval: float = 2.0) -> None:
    """End this process (SIGTERM to itself) once the process that started it is gone.

    A report killed with SIGTERM or SIGKILL gets no chance to stop its pool, and the worker would go on
    training, orphaned, holding its run folder's lock (``unisrec.locking``), so that a rerun of the report is
    refused ("in use by process PID") until the orphan ends, hours later; a stopped run resumes from its last
    checkpoint when the report is run again. A daemon thread compares the parent's process id every
    ``interval`` seconds."""
    import os
    import signal
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def execute_in_parallel(todo: list[PlannedRun], jobs: int, may_start: Callable[[PlannedRun], bool],
                        on_done: Callable[[PlannedRun], None], log: TextIO) -> None:
    """Execute ``todo`` (in priority order) ``jobs`` at a time, each run in its own process with
    cpu_count // jobs torch threads (a run's ``train.threads`` still wins); a run starts once the runs of
    ``todo`` it reads have finished. ``may_start`` (the budget) ends the starting of runs; the first failure
    stops it too and is raised when the runs still going have ended."""
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    pending, planned = list(todo), {run.out for run in todo}
    finished: set[Path] = set()
    errors: list[BaseException] = []
    threads = max(1, (os.cpu_count() or 1) // jobs)
    stopped = False
    started: dict[Path, float] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        running: dict[Future[None], PlannedRun] = {}
        while True:
            for run in list(pending):
                if stopped or errors or len(running) >= jobs:
                    break
                if _needs(run) & (planned - finished):
                    continue  # waits for a run it reads
                if not may_start(run):
                    stopped = True
                    break
                pending.remove(run)
                started[run.out] = time.perf_counter()
                print(f"[start] {run.status()} {run.kind} {run.out} ({threads} threads)", file=log)
                running[pool.submit(execute, run)] = run
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run = running.pop(future)
                error = future.exception()
                if error is not None:
                    errors.append(error)
                    print(f"[failed] {run.kind} {run.out}: {error}", file=log)
                    continue
                finished.add(run.out)
                on_done(run)
                print(f"[done] {run.kind} {run.out} in {time.perf_counter() - started[run.out]:.0f}s", file=log)
    if pending and not errors:
        print(f"{len(pending)} runs not started; rerun to go on", file=log)
    if errors:
        raise errors[0]


def record_name(run: PlannedRun, config: ReportConfig | None = None) -> str | None:
    """The record file name of a run: ``finetune-sasrec-seed-2022``, ``pretrain-amazon-seed-2022``, ... (or the
    config's ``record`` name); None for a run the config gives no record of its own."""
    if config is not None:
        return config.record_name(run.kind, run.name, run.seed)
    return f"{run.kind}-{run.name}" + (f"-seed-{run.seed}" if run.seed is not None else "")


def estimate_seconds(run: PlannedRun, results_dir: Path | None, config: ReportConfig,
                     device: str = "cpu", *, costs: tuple[list[PlannedCost], dict[str, Recorded]] | None = None
                     ) -> float | None:
    """The runner's guess of a run's training seconds on ``device``, by the rule of the report's Compute section
    (``unisrec.run_costs.estimate``: the same experiment's recorded seeds, else the recorded fine-tunings on the
    same dataset or the recorded pre-trainings); None when nothing recorded on that device says. ``costs``: the
    config's planned and recorded costs, read once by a caller that estimates many runs."""
    if results_dir is None or run.kind not in ("pretrain", "finetune"):
        return None
    if costs is None:
        every = planned_costs(config)
        costs = (every, recorded_costs(every, results_dir))
    planned, recorded = costs
    mine = next((c for c in planned if c.kind == run.kind and c.group == run.name and c.seed == run.seed), None)
    if mine is None:
        return None
    return estimate(mine, planned, recorded, device)


def verify_run(config_path: str | Path, out: str | Path, name: str, results_dir: Path, *,
               data_root: str | None = None, log: TextIO | None = None,
               against: str | Path | None = None) -> dict[str, Any]:
    """Rerun the recorded run ``name`` (a record file name without .json) into a temporary folder, or read the
    finished run folder ``against`` instead (a rerun made elsewhere, e.g. by another session's report), and
    compare it with the record; returns {"run", "max_abs_diff", "diff": {split: {metric: d}, "curve": ...}}.

    "curve" holds the difference of every training loss per epoch (``train_loss@1``, ``train_si@2``, ...): the
    only numbers a pre-training run records, and for a fine-tuning run a check of every epoch, not only of the
    chosen one. Epochs that only one side has (a run that stopped elsewhere) are listed under
    "epochs_only_in" ({"record": [...], "rerun": [...]}), present only then. A rerun's pre-training (if any)
    is reused from ``out``.
    """
    import tempfile
    from dataclasses import replace as dc_replace

    log = log or sys.stderr
    record_file = results_dir / f"{name}.json"
    if not record_file.exists():
        names = sorted(p.stem for p in results_dir.glob("*.json") if read_record(p) is not None)
        known = ", ".join(names[:5]) or "none"
        raise UnisrecError(f"{record_file}: no such record (records there: {known})")
    record = read_json(record_file)
    config = load_report_config(config_path, data_root=data_root)
    matches = [r for r in plan_runs(config, Path(out)) if record_name(r, config) == name]
    if not matches or matches[0].kind == "prepare":
        raise UnisrecError(f"{name}: not a training run of {config_path}")
    run = matches[0]
    if isinstance(record.get("plan"), dict) and not same_recorded_plan(record["plan"], run.spec):
        raise UnisrecError(f"{record_file}: recorded with other settings than {config_path} plans for it now; a "
                           "rerun would not test the record (restore the config, or rerun the report to replace "
                           "the record)")
    with tempfile.TemporaryDirectory(prefix="unisrec-verify-") as tmp:
        if against is None:
            again = dc_replace(run, out=Path(tmp) / "run")
            print(f"verify: rerunning {run.kind} {run.name} seed {run.seed} in {again.out}", file=log)
            execute(again, card=False)
        else:
            again = dc_replace(run, out=Path(against))
            if not again.done_file.exists():
                raise UnisrecError(f"{again.out}: not a finished run (no {again.done_file.name})")
        result = differences_from_record(name, record, again.out, again.done_file)
    return result


def differences_from_record(name: str, record: dict[str, Any], run_dir: Path, done_file: Path) -> dict[str, Any]:
    """The finished run ``run_dir`` against the ``record`` of the same plan: {"run", "max_abs_diff", "diff":
    {split: {metric: d}, "curve": {"train_loss@1": d, ...}}} (new minus recorded), plus "epochs_only_in" when
    one side has epochs the other lacks (``verify_run``)."""
    from unisrec.records import run_curve

    fresh = read_json(done_file)
    diff: dict[str, dict[str, float]] = {}
    for split in ("valid", "test"):
        old, new = record.get(split) or {}, fresh.get(split) or {}
        diff[split] = {m: float(new[m]) - float(old[m]) for m in sorted(old) if m in new}
    diff["curve"], unmatched = _curve_differences(record.get("curve") or [], run_curve(run_dir))
    worst = max((abs(d) for part in diff.values() for d in part.values()), default=0.0)
    result: dict[str, Any] = {"run": name, "max_abs_diff": worst, "diff": diff}
    if unmatched["record"] or unmatched["rerun"]:
        result["epochs_only_in"] = unmatched
    return result


def epoch_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The whole epochs a run's ``train.log`` holds (partial epochs of ``max_steps`` and torn lines skipped)."""
    log = run_dir / "train.log"
    entries: list[dict[str, Any]] = []
    for line in (log.read_text(errors="replace").splitlines() if log.is_file() else []):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if isinstance(entry, dict) and isinstance(entry.get("epoch"), int) and not entry.get("partial"):
            entries.append(entry)
    return entries


def seconds_left(folder: Path, estimate: float | None) -> float | None:
    """Training seconds an unfinished run still needs: its estimate (``estimate_seconds``) less the seconds of the
    epochs its ``folder`` already holds, but at least one of those epochs (the median); None without an
    estimate."""
    if estimate is None:
        return None
    done = [float(e["seconds"]) for e in epoch_entries(folder) if isinstance(e.get("seconds"), (int, float))]
    if not done:
        return estimate
    return max(estimate - sum(done), sorted(done)[len(done) // 2])


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def training_left_line(left: list[float | None], device: str, jobs: int) -> str:
    """The dry run's last line: the training seconds the runs to train still need (``seconds_left`` of each; None
    where nothing recorded says), in all and spread over ``jobs`` runs at once."""
    known = [s for s in left if s is not None]
    unknown = len(left) - len(known)
    without = f"{unknown} without an estimate (nothing like them recorded on {device})"
    if not known:
        return f"training left: {len(left)} run(s) to train, {without}"
    line = (f"training left: about {_duration(sum(known))} over {len(known)} of the {len(left)} run(s) to train "
            f"(each as long as the median of its experiment's records on {device}, else of its dataset's "
            f"fine-tunings or of every pre-training, less the epochs it has done)")
    if unknown:
        line += f"; {without}"
    if jobs > 1:  # no sooner than the longest run, which one job trains alone
        line += f"; at least {_duration(max(sum(known) / jobs, max(known)))} with --jobs {jobs}"
    return line


def progress_note(run_dir: Path) -> str:
    """What an interrupted run has done, from its ``train.log`` and ``run.json``: "7 epochs, best valid
    ndcg@10 0.1236 at epoch 6 (patience 10: ends by epoch 16 unless it improves), 455 s an epoch"; a
    pre-training: "1 of 2 epochs, last train_loss 7.4908, 1306 s an epoch"; "" before its first epoch ends.
    Partial epochs (``max_steps``) do not count; an unreadable ``run.json`` leaves the settings out."""
    entries = epoch_entries(run_dir)
    if not entries:
        return ""
    try:
        settings = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
    except UnisrecError:
        settings = {}
    config = settings.get("config") if isinstance(settings, dict) else None
    train = (config.get("train") if isinstance(config, dict) else None) or {}
    seconds = sorted(float(e["seconds"]) for e in entries if isinstance(e.get("seconds"), (int, float)))
    per_epoch = f", {seconds[len(seconds) // 2]:.0f} s an epoch" if seconds else ""
    metric = str(train.get("select_metric", "ndcg@10"))
    scored = [(float(e["valid"][metric]), int(e["epoch"])) for e in entries
              if isinstance(e.get("valid"), dict) and isinstance(e["valid"].get(metric), (int, float))]
    epochs = train.get("epochs")
    if not scored:
        of = f" of {epochs}" if isinstance(epochs, int) else ""
        loss = entries[-1].get("train_loss")
        last = f", last train_loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
        return f"{len(entries)}{of} epochs{last}{per_epoch}"
    best, at = max(scored, key=lambda s: (s[0], -s[1]))  # the first epoch of the best score, as training keeps it
    patience = train.get("patience")
    ends = ""
    if isinstance(patience, int) and patience > 0:
        stop = at + patience if not isinstance(epochs, int) else min(at + patience, epochs)
        ends = f" (patience {patience}: ends by epoch {stop} unless it improves)"
    return f"{len(entries)} epochs, best valid {metric} {best:.4f} at epoch {at}{ends}{per_epoch}"


REMADE_SUFFIX = ".remade.json"  # beside a kept record: how its remade run compares with it
REMADE_TOLERANCE = 1e-4  # largest difference from the record that is still the same run remade (float rounding)


def keep_record_of_remade_run(run: PlannedRun, name: str, record: dict[str, Any], results_dir: Path,
                              log: TextIO) -> dict[str, Any]:
    """A run whose record holds its plan was made again (its folder was gone and a later run reads it, e.g. a
    pre-training that seeds more transfers): the record stays, since the runs recorded earlier came from the run
    it describes, and ``NAME.remade.json`` beside it says how the new one compares (``differences_from_record``,
    with both runs' code, training time and peak memory). A difference beyond ``REMADE_TOLERANCE`` is said on
    ``log``: the runs made from the new folder may not match those recorded from the old one."""
    fresh = read_json(run.done_file)
    result = differences_from_record(name, record, run.out, run.done_file)
    result["record"] = {key: record.get(key) for key in ("code", "seconds_train", "peak_memory_mb", "command")}
    result["remade"] = {"code": fresh.get("code"), "seconds_train": fresh.get("seconds_train"),
                        "peak_memory_mb": fresh.get("peak_memory_mb"), "run_dir": str(run.out)}
    out_file = results_dir / f"{name}{REMADE_SUFFIX}"
    atomic_write_json(out_file, result)
    worst = result["max_abs_diff"]
    same = worst <= REMADE_TOLERANCE and "epochs_only_in" not in result
    print(f"remade {run.kind} {run.out}: its record {results_dir / (name + '.json')} is kept; largest difference "
          f"from it {worst:.3g} ({out_file.name})" + ("" if same else
          "; WARNING: beyond rounding, so the runs recorded from the earlier run may differ from those made "
          "from this one"), file=log)
    return result


def _curve_differences(recorded: list[dict[str, Any]], rerun: list[dict[str, Any]]
                       ) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Per epoch, rerun minus recorded of every ``train_*`` loss both curves have (``train_loss@3``), and the
    epochs only one of them has."""
    old = {int(p["epoch"]): p for p in recorded if "epoch" in p}
    new = {int(p["epoch"]): p for p in rerun if "epoch" in p}
    diff: dict[str, float] = {}
    for epoch in sorted(old.keys() & new.keys()):
        for key, value in sorted(old[epoch].items()):
            again = new[epoch].get(key)
            if key.startswith("train_") and isinstance(value, (int, float)) and isinstance(again, (int, float)):
                diff[f"{key}@{epoch}"] = float(again) - float(value)
    return diff, {"record": sorted(set(old) - set(new)), "rerun": sorted(set(new) - set(old))}


def run_report(
    config_path: str | Path,
    out: str | Path | None,
    *,
    data_root: str | None = None,
    only: list[str] | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    log: TextIO | None = None,
    budget_minutes: float | None = None,
    results_dir: Path | None = None,
    command: str | None = None,
    jobs: int = 1,
    pretrain_only: bool = False,
    plan_counts: dict[str, int] | None = None,
) -> Path:
    """Run what is missing (unless ``report_only``), then write ``results_dir/report.md`` from the records;
    ``dry_run`` only prints the plan.

    Missing runs go seed-major (the first seed of every experiment before the second), each preceded by what it
    needs. ``budget_minutes``: do not start a run whose estimated time (the median of its kind's earlier
    records) exceeds what is left; rerun to go on. ``results_dir`` (default ``out/results``): the records of
    finished runs (``unisrec.records``; small JSON files to commit), one per run, written for every finished
    run that lacks one; the report is made from them alone. ``report_only`` needs no ``out``: it reads only
    the records. ``command``: how the report names the command that regenerates it. ``jobs`` > 1: that many
    runs at once, each in its own process with cpu_count // jobs torch threads (``execute_in_parallel``).
    ``pretrain_only``: of the missing runs, only the pre-trainings (and the datasets they read), e.g. alone on a
    GPU before the fine-tunings share it; a rerun without it goes on from there. ``plan_counts``, with
    ``dry_run``: filled with the number of planned runs of each status printed (``run``, ``cached``, ``later``,
    ``recorded``, ...).
    """
    log = log or sys.stderr
    if jobs < 1:
        raise UnisrecError(f"--jobs must be >= 1, got {jobs}")
    config = load_report_config(config_path, data_root=data_root)
    if out is None and not report_only:
        raise UnisrecError("--out is needed to run experiments (only --report-only works from the records alone)")
    if pretrain_only and report_only:
        raise UnisrecError("--pretrain-only runs pre-trainings; --report-only runs nothing: choose one")
    if results_dir is None:
        if out is None:
            raise UnisrecError("--report-only without --out needs the results folder of the records")
        results_dir = Path(out) / "results"
    from unisrec.report_writer import write_report

    command = command or f"unisrec report {config_path} --report-only --results {results_dir}"
    if report_only:
        return write_report(config, results_dir, command, stale=stale_records(config, results_dir))
    assert out is not None
    out = Path(out)
    if not dry_run:
        hold_folder(out)  # one report runner per report folder ...
        hold_results(Path(results_dir))  # ... and per results folder, whatever its --out
    runs = plan_runs(config, out, only)
    groups = config.long_tail.groups if config.long_tail is not None else 5

    def record(run: PlannedRun) -> None:
        name = record_name(run, config)
        if run.kind == "prepare" or name is None:
            return
        target = results_dir / f"{name}.json"
        held = read_record(target)
        if held is not None and isinstance(held.get("plan"), dict) and same_recorded_plan(held["plan"], run.spec):
            keep_record_of_remade_run(run, name, held, results_dir, log)
            return
        write_record(run.out, target, long_tail_groups=groups, plan=run.spec)

    def stored_plan(run: PlannedRun) -> tuple[bool, object]:
        """Whether ``run`` has a record, and the plan that record holds (None for a version without plans)."""
        name = record_name(run, config)
        stored = read_record(results_dir / f"{name}.json") if name is not None and run.kind != "prepare" else None
        return stored is not None, stored.get("plan") if stored is not None else None

    def recorded(run: PlannedRun) -> bool:
        """Its record holds the same plan: the result is known, the run folder is not needed for it."""
        plan = stored_plan(run)[1]
        return isinstance(plan, dict) and same_recorded_plan(plan, run.spec)

    def missing_runs() -> list[PlannedRun]:
        todo = runs_to_execute(runs, recorded)
        if not pretrain_only:
            return todo
        pretrainings = [run for run in todo if run.kind == "pretrain"]
        return [run for run in todo if run.kind == "pretrain"
                or (run.kind == "prepare" and any(run.out in _needs(r) for r in pretrainings))]

    runs_on = "cuda" if torch.cuda.is_available() else "cpu"  # where train.device=auto puts the runs
    if dry_run:
        to_run = {run.out for run in missing_runs()}
        missing = {run.out for run in runs_to_execute(runs, recorded)}  # with or without --pretrain-only
        planned = planned_costs(config)
        costs = (planned, recorded_costs(planned, results_dir))  # read once for every run below
        left: list[float | None] = []
        for run in runs:
            status = run.status() if run.out in to_run or run.status() == "cached" else \
                "later" if run.out in missing else "recorded"
            print(f"{status:6} {run.out}\n       {run.command()}", file=log)
            note = progress_note(run.out) if status == "resume" else ""
            if note:
                print(f"       so far: {note}", file=log)
            if status in ("new", "resume", "stale") and run.kind in ("pretrain", "finetune"):
                guess = estimate_seconds(run, results_dir, config, runs_on, costs=costs)
                # a replacement under way resumes in its staging folder; a new one, or one not begun, from scratch
                left.append(seconds_left(staging_dir(run.out) if status == "stale" else run.out, guess))
            if plan_counts is not None:
                plan_counts[status] = plan_counts.get(status, 0) + 1
        if left:
            print(training_left_line(left, runs_on, jobs), file=log)
        return results_dir / "report.md"
    def outdated(run: PlannedRun) -> bool:
        """No record, or one of another plan (a record restored from git, a kill before the record was made);
        a record of a version without plans stays."""
        exists, plan = stored_plan(run)
        return not exists or (isinstance(plan, dict) and not same_recorded_plan(plan, run.spec))

    def regroup(run: PlannedRun) -> None:
        """A record of another ``long_tail.groups`` gets the counts of this number of groups, from the ranks of its
        run folder (the same run: the same test metrics), else the long-tail section would stay empty."""
        name = record_name(run, config)
        target = results_dir / f"{name}.json"
        held = read_record(target) if name is not None and run.kind in ("finetune", "zeroshot") else None
        tail = held.get("long_tail") if held is not None else None
        if held is None or not isinstance(tail, list) or len(tail) == groups:
            return
        ran = read_json(run.out / "metrics.json")
        if ran.get("test") != held.get("test") or isinstance(run.args, PrepareArgs):
            return  # a remade run's folder: not the run the record holds
        from unisrec.records import long_tail_counts

        counts = long_tail_counts(run.out, Path(run.args.data[0]), groups)
        if counts is not None:
            atomic_write_json(target, {**held, "long_tail": counts})

    for run in runs:  # finished runs without their record (e.g. made before records existed) get one now
        name = record_name(run, config)
        if run.kind != "prepare" and name is not None and run.status() == "cached":
            if outdated(run):
                record(run)
            else:
                regroup(run)
    todo = missing_runs()
    to_run = {run.out for run in todo}
    known = [r for r in runs if r.kind != "prepare" and r.out not in to_run]  # finished, or known from a record
    reused, training = len(known), sum(r.kind != "prepare" for r in runs)
    by_record = sum(r.status() != "cached" for r in known)
    print(f"{len(runs) - len(todo)} of {len(runs)} runs reused, {len(todo)} to run"
          + (f" ({reused} of {training} results known, {by_record} of them from their records alone)"
             if by_record else ""), file=log)
    todo = priority_order(todo, config.seeds)
    began = time.perf_counter()

    def may_start(run: PlannedRun) -> bool:
        if budget_minutes is None:
            return True
        left = budget_minutes * 60 - (time.perf_counter() - began)
        # what it still needs: an interrupted run goes on from its epochs (a replacement under way, in staging)
        guess = seconds_left(staging_dir(run.out) if run.status() == "stale" else run.out,
                             estimate_seconds(run, results_dir, config, runs_on))
        if (guess is not None and guess > left) or left <= 0:
            print(f"budget: stopping before {run.kind} {run.out} (estimated "
                  f"{(guess or 0) / 60:.1f} min, {max(left, 0) / 60:.1f} min left); rerun to go on", file=log)
            return False
        return True

    if jobs > 1:
        execute_in_parallel(todo, jobs, may_start, record, log)
        return write_report(config, results_dir, command, stale=stale_records(config, results_dir))
    for index, run in enumerate(todo, 1):
        if not may_start(run):
            break
        print(f"[{index}/{len(todo)}] {run.status()} {run.kind} {run.out}", file=log)
        started = time.perf_counter()
        execute(run)
        record(run)
        print(f"[{index}/{len(todo)}] done in {time.perf_counter() - started:.0f}s", file=log)
    return write_report(config, results_dir, command, stale=stale_records(config, results_dir))
