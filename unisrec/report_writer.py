"""report.md, results.json and the PNG plots of ``unisrec report``, from the finished runs of a plan.

Only runs whose spec matches the config count ("cached"); a missing seed shows in the seeds column. Means
and sample standard deviations (ddof = 1) are taken over seeds; relative changes are of the means.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unisrec.atomic import atomic_write_json, atomic_write_text
from unisrec.report_config import PAPER_CITATION, PAPER_METRICS, PAPER_TABLE2, ReportConfig

if TYPE_CHECKING:
    from unisrec.report import PlannedRun

Results = dict[str, dict[int, dict[str, Any]]]  # experiment -> seed -> metrics.json (+ "_dir")


def collect(runs: list[PlannedRun]) -> tuple[Results, dict[str, list[PlannedRun]]]:
    """Finished experiment runs by name and seed, and finished pre-training runs by name."""
    results: Results = {}
    pretrained: dict[str, list[PlannedRun]] = {}
    for run in runs:
        if run.status() != "cached":
            continue
        if run.kind in ("finetune", "zeroshot"):
            metrics = json.loads(run.done_file.read_text())
            results.setdefault(run.name, {})[int(run.seed or 0)] = {**metrics, "_dir": str(run.out)}
        elif run.kind == "pretrain":
            pretrained.setdefault(run.name, []).append(run)
    return results, pretrained


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"


def _test(results: Results, name: str, metric: str) -> list[float]:
    return [float(m["test"][metric]) for _, m in sorted(results.get(name, {}).items()) if metric in m["test"]]


def _relative(new: list[float], old: list[float]) -> str:
    if not new or not old or mean_std(old)[0] == 0:
        return "—"
    return f"{100 * (mean_std(new)[0] / mean_std(old)[0] - 1):+.1f}%"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "table"


def table_section(config: ReportConfig, table: str, results: Results) -> list[str]:
    rows = [e for e in config.experiments if table in e.tables]
    metrics = list(config.metrics)
    paper = {e.name: PAPER_TABLE2[p][e.paper] for e in rows
             if e.paper and (p := config.datasets[e.dataset].paper)}
    key = "ndcg@10" if "ndcg@10" in metrics else metrics[0]
    header = ["experiment", "dataset", *metrics, "seeds", "best epoch", "s / epoch"]
    if paper:
        header.append(f"paper ({' / '.join(PAPER_METRICS)})")
    if any(e.reference for e in rows):
        header.append(f"{key} vs reference")
    lines = [f"## {table}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in rows:
        runs = results.get(e.name, {})
        best = [float(m.get("best_epoch", 0)) for m in runs.values()]
        speed = [float(m["seconds_per_epoch"]) for m in runs.values() if m.get("seconds_per_epoch")]
        row = [e.title, e.dataset, *(cell(_test(results, e.name, m)) for m in metrics),
               f"{len(runs)}/{len(config.seeds)}", f"{np.mean(best):.1f}" if best else "—",
               f"{np.mean(speed):.1f}" if speed else "—"]
        if paper:
            row.append(" / ".join(f"{v:.4f}" for v in paper[e.name]) if e.name in paper else "")
        if any(x.reference for x in rows):
            ref = e.reference
            row.append(f"{_relative(_test(results, e.name, key), _test(results, ref, key))} vs "
                       f"{config.experiment(ref).title}" if ref else "")
        lines.append("| " + " | ".join(row) + " |")
    if paper:
        lines += ["", f"Paper figures: {PAPER_CITATION}, Table 2 (same dataset, same protocol; the paper "
                  "pre-trains on five other Amazon domains with bert-base-uncased text vectors)."]
    return [*lines, ""]


def long_tail_section(config: ReportConfig, results: Results, out: Path, plots: bool) -> tuple[list[str], dict]:
    from unisrec.analysis import load_ranks, metrics_by_group, popularity_groups, split_targets, training_frequency
    from unisrec.datasets import load_processed

    spec = config.long_tail
    assert spec is not None
    names = [n for n in spec.experiments if results.get(n)]
    if not names:
        return ["## Long tail", "", "No finished runs yet.", ""], {}
    dataset = load_processed(_dataset_dir(config, out, config.experiment(names[0]).dataset))
    groups = popularity_groups(training_frequency(dataset), split_targets(dataset), spec.groups)
    k = int(spec.metric.split("@")[1])
    per: dict[str, list[list[float]]] = {}  # experiment -> group -> values over seeds
    for name in names:
        per[name] = [[] for _ in range(spec.groups)]
        for metrics in results[name].values():
            for g, m in enumerate(metrics_by_group(load_ranks(metrics["_dir"]), groups, (k,))):
                if m is not None:
                    per[name][g].append(m[spec.metric])
    titles = [config.experiment(n).title for n in names]
    header = ["group", "training interactions", "items", "test targets", *titles]
    if len(names) >= 2:
        header.append(f"{titles[-1]} vs {titles[0]}")
    lines = [f"## Long tail: test {spec.metric} by popularity of the target item", "",
             f"Items ordered by their number of training interactions and cut into {spec.groups} groups with "
             "about equal numbers of test targets (group 1 = least popular; `unisrec.analysis`).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in range(spec.groups):
        lo, hi = groups.frequency_range[g]
        row = [str(g + 1), f"{lo}–{hi}", str(groups.n_items[g]), str(groups.n_targets[g]),
               *(cell(per[n][g]) for n in names)]
        if len(names) >= 2:
            row.append(_relative(per[names[-1]][g], per[names[0]][g]))
        lines.append("| " + " | ".join(row) + " |")
    if plots:
        from unisrec.report_plots import grouped_bars

        series = {config.experiment(n).title: [mean_std(v) if v else (0.0, 0.0) for v in per[n]] for n in names}
        grouped_bars(out / "long_tail.png", [f"{i + 1}" for i in range(spec.groups)], series,
                     "popularity group (1 = least popular)", f"test {spec.metric}", "Long tail")
        lines += ["", "![long tail](long_tail.png)"]
    data = {n: [mean_std(v) if v else None for v in per[n]] for n in names}
    return [*lines, ""], data


def _dataset_dir(config: ReportConfig, out: Path, name: str) -> Path:
    d = config.datasets[name]
    return config.resolve(d.path) if d.path is not None else out / "data" / name


def transfer_section(config: ReportConfig, results: Results, out: Path, plots: bool) -> tuple[list[str], dict]:
    spec = config.transfer
    assert spec is not None
    base = _test(results, spec.baseline, spec.metric)
    header = ["pre-training corpus", "domains", f"test {spec.metric}", f"vs {config.experiment(spec.baseline).title}"]
    lines = [f"## Transfer: {spec.metric} by pre-training corpus", "",
             f"Baseline: {config.experiment(spec.baseline).title} (no pre-training): {cell(base)}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels, gains, errors, data = [], [], [], {}
    for name in spec.experiments:
        e = config.experiment(name)
        assert e.init is not None
        pre = config.pretrain[e.init]
        values = _test(results, name, spec.metric)
        lines.append(f"| {pre.label or e.init} | {len(pre.datasets)}: {', '.join(pre.datasets)} | {cell(values)} | "
                     f"{_relative(values, base)} |")
        if values and base:
            base_mean = mean_std(base)[0]
            mean, std = mean_std(values)
            labels.append(f"{pre.label or e.init} ({len(pre.datasets)})")
            gains.append(100 * (mean / base_mean - 1))
            errors.append(100 * std / base_mean)
            data[name] = {"gain_percent": gains[-1], "std_percent": errors[-1]}
    if plots and labels:
        from unisrec.report_plots import bars

        bars(out / "transfer.png", labels, gains, errors, f"relative gain in test {spec.metric} (%)",
             "Transfer gain by pre-training corpus (number of domains)")
        lines += ["", "![transfer](transfer.png)"]
    return [*lines, ""], data


def curves_section(config: ReportConfig, results: Results, pretrained: dict[str, list[PlannedRun]],
                   out: Path) -> list[str]:
    from unisrec.report_plots import curves

    lines = ["## Training curves", "", "Validation metric per epoch (first finished seed of each experiment)."]
    metric = "ndcg@10"
    for table in config.tables():
        series = {}
        for e in config.experiments:
            if table in e.tables and results.get(e.name):
                log = _read_log(Path(next(iter(results[e.name].values()))["_dir"]) / "train.log")
                points = [(r["epoch"], r["valid"][metric]) for r in log if metric in r.get("valid", {})]
                if points:
                    series[e.title] = points
        if series:
            name = f"curves-{_slug(table)}.png"
            curves(out / name, series, "epoch", f"valid {metric}", table)
            lines += ["", f"![{table}]({name})"]
    series = {}
    for name, runs in pretrained.items():
        points = [(r["epoch"], r["train_loss"]) for r in _read_log(runs[0].out / "train.log") if "train_loss" in r]
        if points:
            series[name] = points
    if series:
        curves(out / "curves-pretrain.png", series, "epoch", "pre-training loss", "Pre-training")
        lines += ["", "![pre-training](curves-pretrain.png)"]
    return [*lines, ""]


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return records


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_report(config: ReportConfig, out: Path, runs: list[PlannedRun]) -> Path:
    """Write ``out/report.md`` and ``out/results.json`` (and the plots, with matplotlib) from finished runs."""
    out.mkdir(parents=True, exist_ok=True)
    results, pretrained = collect(runs)
    plots = _have_matplotlib()
    finished = sum(len(v) for v in results.values())
    planned = sum(1 for r in runs if r.kind in ("finetune", "zeroshot"))
    lines = [f"# {config.title}", "",
             f"Test metrics, full ranking over all items, mean ± sample std over seeds {list(config.seeds)} "
             f"({finished} of {planned} runs finished). Model selection on validation ndcg@10.", ""]
    if not plots:
        lines += ["(No plots: install matplotlib, `pip install unisrec[report]`.)", ""]
    for table in config.tables():
        lines += table_section(config, table, results)
    extra: dict[str, Any] = {}
    if config.long_tail is not None:
        section, extra["long_tail"] = long_tail_section(config, results, out, plots)
        lines += section
    if config.transfer is not None:
        section, extra["transfer"] = transfer_section(config, results, out, plots)
        lines += section
    if plots:
        lines += curves_section(config, results, pretrained, out)
    lines += ["## Runs", "", "| run | seed | epochs | best epoch | s / epoch | train s | folder |",
              "|---|---|---|---|---|---|---|"]
    for name, seeds in results.items():
        for seed, m in sorted(seeds.items()):
            lines.append(f"| {name} | {seed} | {m.get('epochs', 0)} | {m.get('best_epoch', 0)} | "
                         f"{m.get('seconds_per_epoch', 0):.1f} | {m.get('seconds_train', 0):.0f} | "
                         f"{_relative_path(m['_dir'], out)} |")
    summary = {}
    for name, seeds in results.items():
        stats = {m: mean_std(_test(results, name, m)) for m in config.metrics if _test(results, name, m)}
        summary[name] = {"seeds": sorted(seeds), "test": {m: {"mean": v[0], "std": v[1]} for m, v in stats.items()},
                         "per_seed": {str(s): v["test"] for s, v in sorted(seeds.items())}}
    atomic_write_json(out / "results.json", {"experiments": summary, **extra})
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"


def _relative_path(path: str, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return path
