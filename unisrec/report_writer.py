"""report.md, report.json and the PNG plots of ``unisrec report``, from the run records alone.

The report is a function of the config and of the record files in the results folder
(``results/<report>/<run>.json``, ``unisrec.records``): no run folder, no dataset is read, so
``unisrec report CONFIG --report-only`` regenerates it on any checkout, and a test can require the committed
report.md to equal its regeneration. The text is deterministic: no dates or paths of the machine, fixed float
formats, rows in config order and seeds in config order. A run without a record shows as "not run". A config's
``peers`` add other libraries' records (committed JSON files written by their scripts, e.g.
``benchmarks/peers/rectools_unisrec.py --record``).

Means and sample standard deviations (ddof = 1) are taken over seeds; relative changes are of the means.
Plots (``*.png``) are drawn when matplotlib is installed; report.md names them either way, so that it does not
depend on what is installed.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unisrec.atomic import atomic_write_json, atomic_write_text
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json
from unisrec.records import read_record
from unisrec.report_config import PAPER_CITATION, PAPER_METRICS, PAPER_TABLE2, PeerSpec, ReportConfig
from unisrec.run_costs import estimate, planned_costs, recorded_costs

NOT_RUN = "not run"
Results = dict[str, dict[int, dict[str, Any]]]  # experiment -> seed -> record


@dataclass
class Records:
    """The records a report is made of, found by the record names of its config."""

    results: Results  # fine-tuning and zero-shot records
    pretrained: dict[str, dict[str, Any]]  # pre-training name -> the record of its first recorded seed
    planned: list[tuple[str, int, str | None]]  # (experiment, seed, record name or None) in config order


def load_records(config: ReportConfig, results_dir: Path) -> Records:
    results: Results = {}
    planned: list[tuple[str, int, str | None]] = []
    for e in config.experiments:
        for seed in config.seeds:
            name = config.record_name(e.command, e.name, seed)
            planned.append((e.name, seed, name))
            record = read_record(results_dir / f"{name}.json") if name else None
            if record is not None and isinstance(record.get("test"), dict):
                results.setdefault(e.name, {})[seed] = {**record, "_record": name}
    pretrained: dict[str, dict[str, Any]] = {}
    for name, pre in config.pretrain.items():
        seeds = [pre.seed] if pre.seed is not None else list(config.seeds)
        for seed in seeds:
            record_name = config.record_name("pretrain", name, seed)
            record = read_record(results_dir / f"{record_name}.json") if record_name else None
            if record is not None:
                pretrained[name] = record
                break
    return Records(results, pretrained, planned)


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summary_stats(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation for report.json; the deviation of one value is undefined: null."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std if len(values) > 1 else None}


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"


def _cell(values: list[float]) -> str:
    return cell(values) if values else NOT_RUN


def _test(results: Results, name: str, metric: str) -> list[float]:
    return [float(m["test"][metric]) for _, m in sorted(results.get(name, {}).items()) if metric in m["test"]]


def relative_change(new: list[float], old: list[float]) -> str:
    """The change of the mean of ``new`` against that of ``old``, in percent ("—" when it cannot be said)."""
    if not new or not old or mean_std(old)[0] == 0:
        return "—"
    return f"{100 * (mean_std(new)[0] / mean_std(old)[0] - 1):+.1f}%"


def paired_note(new: dict[int, float], old: dict[int, float]) -> str:
    """`` (seed 1 of both: -3.0%)``: the change over the seeds both sides hold, where they hold other seeds (a mean
    over other seeds carries the seeds' own spread); "" where they hold the same seeds."""
    if set(new) == set(old):
        return ""
    common = sorted(set(new) & set(old))
    if not common:
        return " (no seed in common)"
    label = f"seed {common[0]}" if len(common) == 1 else f"seeds {', '.join(map(str, common))}"
    return f" ({label} of both: {relative_change([new[s] for s in common], [old[s] for s in common])})"


def change_over_seeds(new: dict[int, float], old: dict[int, float]) -> str:
    """``relative_change`` of the values by seed ``new`` against ``old``, and where the two hold other seeds also over
    the seeds both hold ("-7.0% (seed 1 of both: -3.0%)", ``paired_note``); "—" alone when it cannot be said."""
    change = relative_change(list(new.values()), list(old.values()))
    return change if change == "—" else change + paired_note(new, old)


def change_between(results: Results, name: str, reference: str, metric: str) -> str:
    """``change_over_seeds`` of experiment ``name``'s test ``metric`` against ``reference``'s."""

    def by_seed(experiment: str) -> dict[int, float]:
        return {s: float(m["test"][metric]) for s, m in results.get(experiment, {}).items() if metric in m["test"]}

    return change_over_seeds(by_seed(name), by_seed(reference))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "table"


def _number(value: Any, digits: int) -> str:
    return f"{float(value):.{digits}f}" if isinstance(value, (int, float)) else "—"


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
        runs = [m for _, m in sorted(results.get(e.name, {}).items())]
        best = [float(m["best_epoch"]) for m in runs if isinstance(m.get("best_epoch"), (int, float))]
        speed = [float(m["seconds_per_epoch"]) for m in runs if m.get("seconds_per_epoch")]
        row = [e.title, e.dataset, *(_cell(_test(results, e.name, m)) for m in metrics),
               f"{len(runs)}/{len(config.seeds)}", f"{np.mean(best):.1f}" if best else "—",
               f"{np.mean(speed):.1f}" if speed else "—"]
        if paper:
            row.append(" / ".join(f"{v:.4f}" for v in paper[e.name]) if e.name in paper else "")
        if any(x.reference for x in rows):
            ref = e.reference
            row.append(f"{change_between(results, e.name, ref, key)} vs {config.experiment(ref).title}" if ref else "")
        lines.append("| " + " | ".join(row) + " |")
    if paper:
        lines += ["", f"Paper figures: {PAPER_CITATION}, Table 2 (same dataset, same protocol; the paper "
                  "pre-trains on five other Amazon domains with bert-base-uncased text vectors)."]
    return [*lines, ""]


def group_metric(row: dict[str, Any], metric: str) -> float | None:
    """A long-tail metric of one popularity group of a record (None when the record lacks its counts)."""
    name, k = metric.split("@")
    key = {"recall": "hits", "ndcg": "dcg", "mrr": "rr"}[name] + f"@{k}"
    targets = row.get("targets") or 0
    return float(row[key]) / targets if key in row and targets else None


def group_shape(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What makes two records' popularity groups the same: each group's training-interaction range, items and
    test targets."""
    return [(tuple(r.get("frequency_range") or ()), r.get("items"), r.get("targets")) for r in rows]


def long_tail_section(config: ReportConfig, results: Results, out: Path,
                      plots: bool) -> tuple[list[str], dict[str, Any]]:
    spec = config.long_tail
    assert spec is not None
    heading = [f"## Long tail: test {spec.metric} by popularity of the target item", "",
               f"Items ordered by their number of training interactions and cut into {spec.groups} groups with "
               "about equal numbers of test targets (group 1 = least popular; `unisrec.analysis`); from the "
               "hit counts per group in the records.", ""]
    by_seed: dict[str, list[dict[int, float]]] = {}  # experiment -> group -> seed -> value
    shape: list[dict[str, Any]] | None = None  # the groups (frequency range, items, targets) of the records
    other_groups: list[str] = []  # records whose groups are not the first record's (other data): left out
    for name in spec.experiments:
        by_seed[name] = [{} for _ in range(spec.groups)]
        for seed, record in sorted(results.get(name, {}).items()):
            rows = record.get("long_tail")
            if not isinstance(rows, list) or len(rows) != spec.groups:
                continue  # no per-group counts, or counts of another number of groups
            shape = shape or rows
            if group_shape(rows) != group_shape(shape):
                other_groups.append(f"{name} seed {seed}")
                continue
            for g, row in enumerate(rows):
                value = group_metric(row, spec.metric)
                if value is not None:
                    by_seed[name][g][seed] = value
    if shape is None:
        return [*heading, "No record with per-group counts yet.", ""], {}
    per = {name: [list(values.values()) for values in groups] for name, groups in by_seed.items()}  # over seeds
    names = list(spec.experiments)
    titles = [config.experiment(n).title for n in names]
    header = ["group", "training interactions", "items", "test targets", *titles]
    if len(names) >= 2:
        header.append(f"{titles[-1]} vs {titles[0]}")
    lines = [*heading, "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in range(spec.groups):
        lo, hi = shape[g]["frequency_range"]
        row = [str(g + 1), f"{lo}–{hi}", str(shape[g]["items"]), str(shape[g]["targets"]),
               *(_cell(per[n][g]) for n in names)]
        if len(names) >= 2:  # and over the seeds both hold, where they hold other ones (as the main tables)
            row.append(change_over_seeds(by_seed[names[-1]][g], by_seed[names[0]][g]))
        lines.append("| " + " | ".join(row) + " |")
    if other_groups:
        lines += ["", f"Left out, their popularity groups being other ones (other data): {', '.join(other_groups)}."]
    if plots:
        from unisrec.report_plots import grouped_bars

        series = {config.experiment(n).title: [mean_std(v) if v else (0.0, 0.0) for v in per[n]] for n in names}
        grouped_bars(out / "long_tail.png", [f"{i + 1}" for i in range(spec.groups)], series,
                     "popularity group (1 = least popular)", f"test {spec.metric}", "Long tail")
    lines += ["", "![long tail](long_tail.png)"]
    data = {n: [list(mean_std(v)) if v else None for v in per[n]] for n in names}
    return [*lines, ""], data


def transfer_section(config: ReportConfig, results: Results, out: Path,
                     plots: bool) -> tuple[list[str], dict[str, Any]]:
    spec = config.transfer
    assert spec is not None
    base = _test(results, spec.baseline, spec.metric)
    header = ["pre-training corpus", "domains", f"test {spec.metric}", f"vs {config.experiment(spec.baseline).title}"]
    lines = [f"## Transfer: {spec.metric} by pre-training corpus", "",
             f"Baseline: {config.experiment(spec.baseline).title} (no pre-training): {_cell(base)}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels, gains, errors, data = [], [], [], {}
    for name in spec.experiments:
        e = config.experiment(name)
        assert e.init is not None
        pre = config.pretrain[e.init]
        values = _test(results, name, spec.metric)
        lines.append(f"| {pre.label or e.init} | {len(pre.datasets)}: {', '.join(pre.datasets)} | {_cell(values)} | "
                     f"{change_between(results, name, spec.baseline, spec.metric)} |")
        if values and base:
            base_mean = mean_std(base)[0]
            mean, std = mean_std(values)
            labels.append(f"{pre.label or e.init} ({len(pre.datasets)})")
            gains.append(100 * (mean / base_mean - 1))
            errors.append(100 * std / base_mean)
            data[name] = {"gain_percent": gains[-1], "std_percent": errors[-1]}
    if labels:
        if plots:
            from unisrec.report_plots import bars

            bars(out / "transfer.png", labels, gains, errors, f"relative gain in test {spec.metric} (%)",
                 "Transfer gain by pre-training corpus (number of domains)")
        lines += ["", "![transfer](transfer.png)"]
    return [*lines, ""], data


def peer_records(config: ReportConfig, peer: PeerSpec) -> list[dict[str, Any]]:
    """The records of each file matching ``peer.records`` (relative to the config file), in file-name order; a file
    that is not a JSON object with a ``test`` mapping is an error naming it."""
    pattern = peer.records if Path(peer.records).is_absolute() else str(Path(config.base_dir) / peer.records)
    found: list[dict[str, Any]] = []
    for path in sorted(Path(p) for p in glob.glob(pattern)):
        record = read_json(path, f"peer record {peer.name!r}")
        if not isinstance(record, dict) or not isinstance(record.get("test"), dict):
            raise UnisrecError(f"{path}: peer record {peer.name!r} has no 'test' metrics")
        found.append(record)
    return found


def _peer_row(title: str, runs: list[dict[str, Any]], metrics: list[str], versus: str) -> str:
    """One Peers table row: test metrics mean ± std, the epoch span, the median seconds per epoch."""
    cells = [cell([float(r["test"][m]) for r in runs if m in r["test"]]) for m in metrics]
    epochs = sorted({int(r["epochs"]) for r in runs if isinstance(r.get("epochs"), (int, float))})
    span = "—" if not epochs else (f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}")
    speed = [float(r["seconds_per_epoch"]) for r in runs if isinstance(r.get("seconds_per_epoch"), (int, float))]
    per_epoch = _number(float(np.median(speed)), 1) if speed else "—"
    return f"| {title} | {len(runs)} | " + " | ".join(cells) + f" | {span} | {per_epoch} | {versus} |"


def peers_section(config: ReportConfig, results: Results) -> tuple[list[str], dict[str, Any]]:
    """Other libraries' runs (their own records) beside an experiment of this report: test metrics, mean ± std
    over their records, epochs and seconds per epoch, and the change against the reference experiment."""
    metrics = list(config.metrics)
    key = "ndcg@10" if "ndcg@10" in metrics else metrics[0]
    lines = ["## Peers", "", "Other libraries on the same data, text vectors and protocol, from their own records "
             "(files matching each peer's `records`); the reference row is this report's experiment.", "",
             "| model | runs | " + " | ".join(metrics) + f" | epochs | s / epoch | {key} vs reference |",
             "|" + "---|" * (len(metrics) + 5)]
    summary: dict[str, Any] = {}
    for peer in config.peers:
        runs = peer_records(config, peer)
        per_metric = {m: [float(r["test"][m]) for r in runs] for m in metrics
                      if runs and all(m in r["test"] for r in runs)}
        theirs = [float(r["test"][key]) for r in runs if key in r["test"]]
        versus = relative_change(theirs, _test(results, peer.reference, key)) if peer.reference else "—"
        lines.append(_peer_row(peer.title, runs, metrics, versus))
        if peer.reference:
            reference = list(results.get(peer.reference, {}).values())
            lines.append(_peer_row(f"{config.experiment(peer.reference).title} (this report)", reference, metrics, ""))
        summary[peer.name] = {"runs": len(runs), "reference": peer.reference,
                              "test": {m: summary_stats(values) for m, values in per_metric.items()}}
    lines += ["", "s / epoch: median wall seconds per training epoch as each side recorded it.", ""]
    return lines, summary


def curves_section(config: ReportConfig, records: Records, out: Path, plots: bool) -> list[str]:
    lines = ["## Training curves", "", "Validation metric per epoch (first recorded seed of each experiment)."]
    metric = "ndcg@10"
    for table in config.tables():
        series = {}
        for e in config.experiments:
            runs = records.results.get(e.name)
            if table in e.tables and runs:
                curve = runs[min(runs)].get("curve") or []
                points = [(p["epoch"], p["valid"][metric]) for p in curve if metric in (p.get("valid") or {})]
                if points:
                    series[e.title] = points
        if series:
            name = f"curves-{_slug(table)}.png"
            if plots:
                from unisrec.report_plots import curves

                curves(out / name, series, "epoch", f"valid {metric}", table)
            lines += ["", f"![{table}]({name})"]
    series = {}
    for name, record in records.pretrained.items():
        points = [(p["epoch"], p["train_loss"]) for p in record.get("curve") or [] if "train_loss" in p]
        if points:
            series[name] = points
    if series:
        if plots:
            from unisrec.report_plots import curves

            curves(out / "curves-pretrain.png", series, "epoch", "pre-training loss", "Pre-training")
        lines += ["", "![pre-training](curves-pretrain.png)"]
    return [*lines, ""]


def compute_section(config: ReportConfig, results_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """What the report's runs cost on the CPU: training seconds summed over the runs recorded there, and an
    estimate for the others (``unisrec.run_costs``: the same experiment's recorded seeds, else the recorded
    fine-tunings on the same dataset, else none). Runs recorded on a GPU are counted apart and estimated for
    the CPU like missing ones. Text encoding and evaluation-only (zero-shot) runs are not counted."""
    planned = planned_costs(config)
    recorded = recorded_costs(planned, results_dir)
    summary: dict[str, Any] = {}
    lines = ["## Compute", "", "Training time of the runs (one torch thread each, as recorded), summed; runs not "
             "recorded yet are estimated from the median of the same experiment's recorded seeds, else of the "
             "recorded fine-tunings on the same dataset (a pre-training: of the recorded pre-trainings); a "
             "fine-tuning on a dataset with none recorded is left without an estimate. Text encoding and zero-shot "
             "evaluation are not counted.", "",
             "| runs | recorded | hours recorded | not recorded | hours estimated |", "|---|---|---|---|---|"]
    total_hours = 0.0
    complete = True
    on_gpu: list[float] = []
    on_cpu = {name: run.seconds for name, run in recorded.items() if run.device == "cpu"}
    for kind, label in (("pretrain", "pre-training"), ("finetune", "fine-tuning")):
        runs = [r for r in planned if r.kind == kind]
        done = [on_cpu[r.record] for r in runs if r.record in on_cpu]
        on_gpu += [recorded[r.record].seconds for r in runs if r.record in recorded and r.record not in on_cpu]
        estimated, unknown = 0.0, 0
        for run in runs:
            if run.record in on_cpu:
                continue
            guess = estimate(run, planned, recorded)
            if guess is None:
                unknown += 1
            else:
                estimated += guess
        complete = complete and unknown == 0
        hours, guess_hours = sum(done) / 3600, estimated / 3600
        total_hours += hours + guess_hours
        missing = len(runs) - len(done)
        lines.append(f"| {label} | {len(done)} of {len(runs)} | {hours:.2f} | {missing} | "
                     + (f"{guess_hours:.2f}" if unknown == 0 else f"{guess_hours:.2f} + {unknown} without an estimate")
                     + " |")
        summary[kind] = {"runs": len(runs), "recorded": len(done), "hours_recorded": round(hours, 3),
                         "hours_estimated": round(guess_hours, 3), "without_estimate": unknown}
    summary["hours_total"] = round(total_hours, 3)
    if on_gpu:
        summary["gpu"] = {"runs": len(on_gpu), "hours": round(sum(on_gpu) / 3600, 3)}
        lines += ["", f"{len(on_gpu)} run(s) were recorded on a GPU ({sum(on_gpu) / 3600:.2f} hours there): they "
                  "count above as not recorded, their CPU time estimated like a missing run's."]
    lines += ["", f"The whole report from scratch: about {total_hours:.1f} CPU-hours of training"
              + ("" if complete else " (not counting the runs without an estimate)")
              + f", about {total_hours / 2:.1f} hours of wall time as two one-thread runs at once on 2 cores "
              "(`--jobs 2`; a lower bound, since a fine-tuning waits for its pre-training).", ""]
    return lines, summary


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _selection_sentence(results: Results) -> str:
    """"Model selection on validation ndcg@10." from the records' ``train.select_metric`` (default ndcg@10), or
    per experiment where they differ."""
    by_metric: dict[str, list[str]] = {}
    for experiment, seeds in results.items():
        for record in seeds.values():
            train = (record.get("config") or {}).get("train") or {}
            metric = str(train.get("select_metric") or "ndcg@10")
            if experiment not in by_metric.setdefault(metric, []):
                by_metric[metric].append(experiment)
    if len(by_metric) <= 1:
        return f"Model selection on validation {next(iter(by_metric), 'ndcg@10')}."
    parts = [f"{metric} ({', '.join(names)})" for metric, names in sorted(by_metric.items())]
    return f"Model selection on validation {'; '.join(parts)}."


def render_report(config: ReportConfig, results_dir: Path, command: str, *,
                  plots_to: Path | None = None, stale: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """(report.md text, report.json content) from the records in ``results_dir``; ``command`` regenerates it
    (written in the report's first line). ``plots_to``: draw the PNGs there (with matplotlib). ``stale``: records
    made with other settings than the config plans now: named under the title, their figures shown as recorded."""
    records = load_records(config, results_dir)
    results = records.results
    plots = plots_to is not None and _have_matplotlib()
    out = plots_to or results_dir
    finished = sum(len(v) for v in results.values())
    lines = [f"<!-- Generated from the run records beside this file by `{command}`; do not edit. -->", "",
             f"# {config.title}", "",
             f"Test metrics, full ranking over all items, mean ± sample std over seeds {list(config.seeds)} "
             f"({finished} of {len(records.planned)} runs recorded). {_selection_sentence(results)} "
             "Plots (PNG) are drawn beside this file where matplotlib is installed.", ""]
    if stale:
        lines += [f"**Stale records:** {len(stale)} of the records were made with other settings than this config "
                  f"plans now ({', '.join(stale)}); their figures are shown as recorded until `unisrec report` "
                  "with `--out` remakes them.", ""]
    for table in config.tables():
        lines += table_section(config, table, results)
    extra: dict[str, Any] = {}
    if config.long_tail is not None:
        section, extra["long_tail"] = long_tail_section(config, results, out, plots)
        lines += section
    if config.transfer is not None:
        section, extra["transfer"] = transfer_section(config, results, out, plots)
        lines += section
    if config.peers:
        section, extra["peers"] = peers_section(config, results)
        lines += section
    lines += curves_section(config, records, out, plots)
    section, extra["compute"] = compute_section(config, results_dir)
    lines += section
    lines += ["## Runs", "", "| experiment | seed | record | epochs | best epoch | s / epoch | train s |",
              "|---|---|---|---|---|---|---|"]
    for name, seed, record_name in records.planned:
        m = results.get(name, {}).get(seed)
        if m is None:
            lines.append(f"| {name} | {seed} | {record_name or '—'} | {NOT_RUN} | | | |")
            continue
        lines.append(f"| {name} | {seed} | {record_name} | {m.get('epochs', '—')} | {m.get('best_epoch', '—')} | "
                     f"{_number(m.get('seconds_per_epoch'), 1)} | {_number(m.get('seconds_train'), 0)} |")
    if records.pretrained:
        lines += ["", "| pre-training | record | seed | epochs | steps | train s |", "|---|---|---|---|---|---|"]
        for name, r in records.pretrained.items():
            lines.append(f"| {name} | {r.get('run')} | {r.get('seed')} | {r.get('epochs', '—')} | "
                         f"{r.get('steps') or '—'} | {_number(r.get('seconds_train'), 0)} |")
    summary = {}
    for name, seeds in results.items():
        test = {m: summary_stats(_test(results, name, m)) for m in config.metrics if _test(results, name, m)}
        summary[name] = {"seeds": sorted(seeds), "test": test,
                         "per_seed": {str(s): v["test"] for s, v in sorted(seeds.items())}}
    if stale:
        extra["stale_records"] = list(stale)
    return "\n".join(lines) + "\n", {"experiments": summary, **extra}


def write_report(config: ReportConfig, results_dir: Path, command: str, stale: Sequence[str] = ()) -> Path:
    """Write ``results_dir/report.md`` and ``report.json`` (and the plots, with matplotlib) from its records;
    ``stale``: the records made with other settings than the config plans now (said in both)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text, summary = render_report(config, results_dir, command, plots_to=results_dir, stale=stale)
    atomic_write_json(results_dir / "report.json", summary)
    return atomic_write_text(results_dir / "report.md", text)
