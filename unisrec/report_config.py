"""The experiment config of ``unisrec report``: datasets, pre-training runs, experiments, seeds, analyses.

YAML schema (unknown keys are errors; relative paths are relative to the config file)::

    title: UniSRec on Amazon Scientific     # heading of report.md
    seeds: [2022, 2023, 2024]               # every experiment runs once per seed (train.seed)
    data_root: ../../../shared/data         # base of the dataset sources below (``--data-root`` overrides it)
    text_model: null                        # language model of the item texts (null: the packaged MiniLM;
    pooling: null                           #   a folder relative to the config file, or a hub name); other
                                            #   text settings: overrides [text.max_length=64, ...]
    config: null                            # base run config YAML (sections model/train/eval/pretrain;
                                            #   its pretrain section reaches the pre-trainings only)
    overrides: [train.threads=2]            # dotted overrides of every run (pre-training and fine-tuning;
                                            #   pretrain.* ones reach the pre-trainings only)
    metrics: [recall@10, ndcg@10, recall@50, ndcg@50]
    datasets:                               # name -> a source to prepare (cached in OUT/data/NAME) ...
      scientific: {source: amazon-scientific, format: unisrec, name: Scientific, paper: Scientific}
      beauty: {source: multi-domain/amazon2014-beauty, format: csv}
      mine: {path: /data/processed/mine}    # ... or an already processed folder
    pretrain:                               # name -> a pre-training run over several datasets
      amazon: {datasets: [beauty, ...], overrides: [train.epochs=10], seed: 2022}
    experiments:                            # run in this order
      - {name: sasrec, dataset: scientific, mode: sasrec, tables: [main], paper: SASRec}
      - {name: unisrec-t, dataset: scientific, mode: inductive, init: amazon, paper: UniSRec_t}
      - {name: zero-shot, dataset: scientific, command: zeroshot, init: amazon}
    long_tail: {experiments: [sasrec, unisrec-t], groups: 5, metric: ndcg@10}
    transfer: {baseline: unisrec-t-scratch, experiments: [unisrec-t, ...], metric: ndcg@10}
    peers:                                  # other libraries' runs, from their own records (test metrics)
      - {name: rectools, label: RecTools UniSRecModel, records: ../../results/peers/rectools-s*.json,
         reference: unisrec-t-scratch}

- ``pretrain.seed``: an integer = one pre-training run shared by every seed of the experiments that use it;
  null = one pre-training run per experiment seed (seeded alike).
- ``experiments[].init``: a pre-training name, or the name of an EARLIER experiment (its run of the same
  seed; e.g. a zesrec source-domain run). ``command: zeroshot`` evaluates ``init`` on the dataset with no
  training (text models only).
- ``record`` (experiments and pre-trainings): the name of its record files under the results folder, with
  ``{seed}`` for the seed (default ``finetune-NAME-seed-{seed}``, ``pretrain-NAME-seed-{seed}``,
  ``zeroshot-NAME-seed-{seed}``); lets a config adopt records made by hand (``unisrec record``). A name
  without ``{seed}`` is the record of the first seed only.
- ``peers[].records``: a glob (relative to the config file) of JSON records written by a peer's script, each
  with ``test`` and ``valid`` metrics (and ``epochs``, ``seconds_per_epoch`` where known); the Peers table puts
  them beside ``reference``, an experiment of this report.
- ``tables``: the report tables that list the experiment (in order of first appearance); ``reference``: an
  experiment the table compares it with (relative change of every metric); ``paper``: the column of the
  paper's Table 2 (SASRec, UniSRec_t, UniSRec_t+ID) shown beside it when its dataset has ``paper`` set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

from unisrec.config import (
    MODES,
    Pooling,
    RunConfig,
    check_finetune_needs,
    from_plain,
    load_config,
    pretraining_overrides,
    read_yaml_mapping,
    with_mode_network,
)
from unisrec.errors import ConfigError
from unisrec.records import LONG_TAIL_KS

# Hou et al., KDD 2022, Table 2 (the paper's main results table): Recall@10, NDCG@10, Recall@50, NDCG@50
PAPER_CITATION = "Hou et al., Towards Universal Sequence Representation Learning for Recommender Systems, KDD 2022"
PAPER_METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
PAPER_TABLE2: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "Scientific": {"SASRec": (0.1080, 0.0553, 0.2042, 0.0760), "UniSRec_t": (0.1188, 0.0641, 0.2394, 0.0903),
                   "UniSRec_t+ID": (0.1235, 0.0634, 0.2473, 0.0904)},
    "Pantry": {"SASRec": (0.0501, 0.0218, 0.1322, 0.0394), "UniSRec_t": (0.0636, 0.0306, 0.1658, 0.0527),
               "UniSRec_t+ID": (0.0693, 0.0311, 0.1827, 0.0556)},
    "Instruments": {"SASRec": (0.1118, 0.0612, 0.2106, 0.0826), "UniSRec_t": (0.1189, 0.0680, 0.2255, 0.0912),
                    "UniSRec_t+ID": (0.1267, 0.0748, 0.2387, 0.0991)},
    "Arts": {"SASRec": (0.1108, 0.0587, 0.2030, 0.0788), "UniSRec_t": (0.1066, 0.0586, 0.2049, 0.0799),
             "UniSRec_t+ID": (0.1239, 0.0712, 0.2347, 0.0955)},
    "Office": {"SASRec": (0.1056, 0.0710, 0.1627, 0.0835), "UniSRec_t": (0.1013, 0.0619, 0.1702, 0.0769),
               "UniSRec_t+ID": (0.1280, 0.0831, 0.2016, 0.0991)},
    "Online Retail": {"SASRec": (0.1460, 0.0675, 0.3872, 0.1201), "UniSRec_t": (0.1449, 0.0677, 0.3604, 0.1149),
                      "UniSRec_t+ID": (0.1537, 0.0724, 0.3885, 0.1239)},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_RECORD = re.compile(r"^[A-Za-z0-9{][A-Za-z0-9_.+{}-]*$")


@dataclass(frozen=True)
class DatasetSpec:
    source: str | None = None  # raw source prepared into OUT/data/NAME (relative to data_root)
    format: str = "unisrec"  # `unisrec prepare --format`
    name: str | None = None  # `unisrec prepare --name` (unisrec / recbole: the file prefix)
    path: str | None = None  # an already processed folder, used as is (instead of source)
    paper: str | None = None  # the paper's name of this dataset (a row of its Table 2), if any
    user_core: int = 5  # prepare: k-core filtering of users / items (refused with format unisrec)
    item_core: int = 5


@dataclass(frozen=True)
class PretrainSpec:
    datasets: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    seed: int | None = None  # shared run with this seed; None: one run per experiment seed
    label: str | None = None  # how plots and tables name the corpus (default: the pre-training name)
    record: str | None = None  # record file name ({seed}: the seed); default pretrain-NAME-seed-{seed}


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    dataset: str
    mode: str = "inductive"  # a finetune --mode (ignored by zeroshot)
    command: Literal["finetune", "zeroshot"] = "finetune"
    init: str | None = None  # a pre-training name or an earlier experiment
    overrides: tuple[str, ...] = ()
    tables: tuple[str, ...] = ("main",)
    label: str | None = None  # row name in the report (default: name)
    paper: str | None = None  # SASRec | UniSRec_t | UniSRec_t+ID
    reference: str | None = None  # compared with this experiment in its tables
    record: str | None = None  # record file name ({seed}: the seed); default COMMAND-NAME-seed-{seed}

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class LongTailSpec:
    experiments: tuple[str, ...]
    groups: int = 5
    metric: str = "ndcg@10"


@dataclass(frozen=True)
class TransferSpec:
    baseline: str  # the experiment without pre-training
    experiments: tuple[str, ...]  # experiments initialised from different pre-training corpora
    metric: str = "ndcg@10"


@dataclass(frozen=True)
class PeerSpec:
    name: str
    records: str  # glob of the peer's record files, relative to the config file
    label: str | None = None
    reference: str | None = None  # an experiment of the report shown beside it

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class ReportConfig:
    experiments: tuple[ExperimentSpec, ...]
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    pretrain: dict[str, PretrainSpec] = field(default_factory=dict)
    title: str = "UniSRec experiments"
    seeds: tuple[int, ...] = (2022,)
    data_root: str | None = None
    text_model: str | None = None
    pooling: Pooling | None = None
    config: str | None = None
    overrides: tuple[str, ...] = ()
    metrics: tuple[str, ...] = PAPER_METRICS
    long_tail: LongTailSpec | None = None
    transfer: TransferSpec | None = None
    peers: tuple[PeerSpec, ...] = ()
    base_dir: str = "."  # folder of the config file (set by load_report_config)

    def experiment(self, name: str) -> ExperimentSpec:
        for experiment in self.experiments:
            if experiment.name == name:
                return experiment
        raise KeyError(name)

    def resolve(self, path: str, *, data: bool = False) -> Path:
        """A config path: absolute, or relative to the config file (to data_root for dataset sources)."""
        base = Path(self.base_dir)
        if data and self.data_root is not None:
            base = base / self.data_root
        return (base / path).resolve()

    def text_settings(self) -> dict[str, str]:
        """The text settings the report sets (``text_model``: a folder relative to the config file, or a name)."""
        settings: dict[str, str] = {}
        if self.text_model is not None:
            local = Path(self.base_dir) / self.text_model
            settings["model"] = str(local.resolve()) if local.exists() else self.text_model
        if self.pooling is not None:
            settings["pooling"] = self.pooling
        return settings

    def tables(self) -> list[str]:
        return list(dict.fromkeys(t for e in self.experiments for t in e.tables))

    def record_name(self, kind: str, name: str, seed: int | None) -> str | None:
        """The record file name (without .json) of a run, or None when its record names only the first seed."""
        template = None
        if kind == "pretrain":
            template = self.pretrain[name].record if name in self.pretrain else None
        elif kind in ("finetune", "zeroshot"):
            template = self.experiment(name).record
        if template is None:
            return f"{kind}-{name}" + (f"-seed-{seed}" if seed is not None else "")
        if "{seed}" in template:
            return template.replace("{seed}", str(seed))
        shared = self.pretrain[name].seed if kind == "pretrain" and name in self.pretrain else None
        first = shared if shared is not None else self.seeds[0]  # one run per seed (seed null): the first
        return template if seed in (None, first) else None


def load_report_config(path: str | Path, *, data_root: str | None = None) -> ReportConfig:
    """Read and check a report config; ``data_root`` replaces the file's (relative to the working directory)."""
    path = Path(path)
    data = read_yaml_mapping(path, "report config", "datasets / experiments / seeds")
    if "base_dir" in data:
        raise ConfigError(f"{path}: unknown key 'base_dir'")
    data = dict(data)
    for key, cls in (("datasets", DatasetSpec), ("pretrain", PretrainSpec)):
        entries = data.get(key) or {}
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: {key} must be a mapping of name -> settings")
        data[key] = {name: _entry(cls, value, f"{path}: {key}.{name}") for name, value in entries.items()}
    if not data.get("experiments"):
        raise ConfigError(f"{path}: no experiments")
    config: ReportConfig = from_plain(ReportConfig, {**data, "base_dir": str(path.parent.resolve())}, str(path))
    if data_root is not None:
        config = replace(config, data_root=str(Path(data_root).resolve()))
    check_report_config(config, str(path))
    return config


def _entry(cls: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return from_plain(cls, value, where)


def check_report_config(config: ReportConfig, where: str) -> None:
    """Every name defined once and every reference defined (earlier, for experiment inits)."""

    from unisrec.datasets import FORMATS, PrepareOptions  # here: reading a report config needs no data code otherwise

    def fail(message: str) -> NoReturn:
        raise ConfigError(f"{where}: {message}")

    base = load_config(config.resolve(config.config)) if config.config else RunConfig()  # what every run starts from
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        fail(f"seeds must be distinct and at least one, got {list(config.seeds)}")
    if any(seed < 0 for seed in config.seeds):
        fail(f"seeds must be >= 0, got {list(config.seeds)}")
    try:
        ks = base.with_overrides(list(config.overrides)).eval.ks  # the cut-offs every run's records hold
    except ConfigError as exc:
        fail(f"overrides: {exc}")
    if not config.metrics:
        fail("metrics: name at least one (the tables' columns), e.g. [recall@10, ndcg@10]")
    for metric in config.metrics:
        name, _, cutoff = metric.partition("@")  # cold_recall / cold_ndcg: over the cold items' targets
        if name not in ("recall", "ndcg", "mrr", "cold_recall", "cold_ndcg") or not cutoff.isdigit() \
                or f"{int(cutoff)}" != cutoff or int(cutoff) not in ks:
            fail(f"metrics: {metric!r} is not recall@K, ndcg@K, mrr@K, cold_recall@K or cold_ndcg@K with K one of "
                 f"eval.ks {list(ks)} (the records hold no other)")
    for name, dataset in config.datasets.items():
        if not isinstance(name, str) or not _NAME.match(name):
            fail(f"dataset name {name!r}: use letters, digits and _ . + -")
        if (dataset.source is None) == (dataset.path is None):
            fail(f"datasets.{name}: give exactly one of source (to prepare) or path (a processed folder)")
        if dataset.source is not None and dataset.format not in FORMATS:  # else found when it is prepared, mid-report
            fail(f"datasets.{name}.format: {dataset.format!r} is not one of {', '.join(FORMATS)}")
        for core in ("user_core", "item_core"):
            if getattr(dataset, core) < 0:
                fail(f"datasets.{name}.{core} must be >= 0, got {getattr(dataset, core)}")
            if dataset.format == "unisrec" and getattr(dataset, core) != getattr(PrepareOptions(), core):
                fail(f"datasets.{name}.{core} does not apply to format unisrec (its folder is already filtered and "
                     "split): remove it")
        if dataset.paper is not None and dataset.paper not in PAPER_TABLE2:
            fail(f"datasets.{name}.paper: {dataset.paper!r} is not in the paper's Table 2 ({', '.join(PAPER_TABLE2)})")
    for name, pre in config.pretrain.items():
        if not isinstance(name, str) or not _NAME.match(name):
            fail(f"pre-training name {name!r}: use letters, digits and _ . + -")
        if pre.seed is not None and pre.seed < 0:
            fail(f"pretrain.{name}.seed must be an integer >= 0, got {pre.seed!r}")
        for d in pre.datasets:
            if d not in config.datasets:
                fail(f"pretrain.{name}: unknown dataset {d!r}")
        if not pre.datasets:
            fail(f"pretrain.{name}: no datasets")
        try:  # unknown keys and bad values, at planning rather than when the pre-training starts
            base.with_overrides([*config.overrides, *pre.overrides])
        except ConfigError as exc:
            fail(f"pretrain.{name}: {exc}")
        _check_record(pre.record, f"pretrain.{name}", fail)
    seen: set[str] = set()
    for e in config.experiments:
        at = f"experiment {e.name!r}"
        if not _NAME.match(e.name):
            fail(f"{at}: use letters, digits and _ . + - in names")
        if e.name in seen:
            fail(f"{at}: defined twice")
        if e.dataset not in config.datasets:
            fail(f"{at}: unknown dataset {e.dataset!r}")
        if e.command == "finetune" and e.mode not in MODES:
            fail(f"{at}: unknown mode {e.mode!r} (one of {', '.join(MODES)})")
        if e.init is not None and e.init not in config.pretrain and e.init not in seen:
            fail(f"{at}: init {e.init!r} is neither a pre-training nor an earlier experiment")
        if e.init is not None and e.init not in config.pretrain and config.experiment(e.init).command == "zeroshot":
            fail(f"{at}: init {e.init!r} is a zero-shot evaluation, which trains no model to start from")
        if e.command == "zeroshot" and e.init is None:
            fail(f"{at}: command zeroshot needs init")
        if e.paper is not None and e.paper not in PAPER_TABLE2["Scientific"]:
            fail(f"{at}: paper must be one of {', '.join(PAPER_TABLE2['Scientific'])}")
        if e.reference is not None and e.reference not in {x.name for x in config.experiments}:
            fail(f"{at}: unknown reference {e.reference!r}")
        if e.reference is not None and config.experiment(e.reference).dataset != e.dataset:
            fail(f"{at}: reference {e.reference!r} is on dataset {config.experiment(e.reference).dataset!r}, not "
                 f"{e.dataset!r}: a relative change compares runs on one dataset")
        _check_record(e.record, at, fail)
        try:  # unknown keys and bad values, named with their experiment
            run_config = base.with_overrides([*config.overrides, *e.overrides])
        except ConfigError as exc:
            fail(f"{at}: {exc}")
        unread = pretraining_overrides(e.overrides) if e.command == "finetune" else []
        if unread:
            fail(f"{at}: {unread[0]} is a pre-training setting, which fine-tuning does "
                 "not read (give it to a pretrain entry)")
        if e.command == "finetune":
            # with init the rest is the pre-trained run's: only the model overrides given are checked
            given = {o.split("=", 1)[0][len("model."):] for o in [*config.overrides, *e.overrides]
                     if o.startswith("model.")} if e.init is not None else None
            try:  # what finetune's resolve_config checks, at planning rather than when the run starts
                network = with_mode_network(run_config, run_config.model, e.mode, given)
                check_finetune_needs(network, e.init is not None)
            except ConfigError as exc:
                fail(f"{at}: {exc}")
        if not run_config.eval.test:
            fail(f"{at}: eval.test=false leaves the run without test metrics, which every report table reads "
                 "(choose settings with `unisrec finetune ... --eval.test=false` outside a report)")
        seen.add(e.name)
    records = [config.record_name(e.command, e.name, s) for e in config.experiments for s in config.seeds]
    records += [config.record_name("pretrain", name, s) for name, pre in config.pretrain.items()
                for s in ([pre.seed] if pre.seed is not None else config.seeds)]
    named = [r for r in records if r is not None]
    if len(set(named)) != len(named):
        twice = sorted({r for r in named if named.count(r) > 1})[0]
        fail(f"two runs share the record name {twice!r} (record templates need {{seed}} to tell seeds apart; "
             "pre-trainings and experiments need names of their own)")
    if config.long_tail is not None:
        tail = config.long_tail
        for name in tail.experiments:
            if name not in seen:
                fail(f"long_tail: unknown experiment {name!r}")
        if tail.groups < 1:
            fail("long_tail.groups must be >= 1")
        if not re.match(r"^(recall|ndcg|mrr)@[1-9][0-9]*$", tail.metric) \
                or int(tail.metric.partition("@")[2]) not in LONG_TAIL_KS:
            fail(f"long_tail.metric: {tail.metric!r} is not recall@K, ndcg@K or mrr@K with K one of "
                 f"{list(LONG_TAIL_KS)} (the cut-offs whose hits the records count per item group)")
        if len({config.experiment(n).dataset for n in tail.experiments}) > 1:
            fail("long_tail: the experiments must share one dataset")
    if config.transfer is not None:
        transfer = config.transfer
        for name in (transfer.baseline, *transfer.experiments):
            if name not in seen:
                fail(f"transfer: unknown experiment {name!r}")
        baseline = config.experiment(transfer.baseline)
        if baseline.init is not None:
            fail(f"transfer.baseline {transfer.baseline!r} starts from {baseline.init!r}: the baseline of a transfer "
                 "is trained from scratch")
        for name in transfer.experiments:
            if config.experiment(name).init not in config.pretrain:
                fail(f"transfer: experiment {name!r} is not initialised from a pre-training run")
            if config.experiment(name).dataset != baseline.dataset:
                fail(f"transfer: experiment {name!r} is on dataset {config.experiment(name).dataset!r}, the baseline "
                     f"{transfer.baseline!r} on {baseline.dataset!r}: a transfer is judged on one dataset")
        if transfer.metric not in config.metrics:
            fail(f"transfer.metric {transfer.metric!r} is not one of metrics {list(config.metrics)}")
    peer_names: set[str] = set()
    for peer in config.peers:
        if not _NAME.match(peer.name) or peer.name in peer_names:
            fail(f"peers: name {peer.name!r} is repeated or not letters, digits and _ . + -")
        peer_names.add(peer.name)
        if not peer.records.strip():
            fail(f"peers.{peer.name}.records: empty")
        if peer.reference is not None and peer.reference not in seen:
            fail(f"peers.{peer.name}: unknown reference {peer.reference!r}")


def _check_record(template: str | None, at: str, fail: Any) -> None:
    if template is None:
        return
    if not _RECORD.match(template) or template.replace("{seed}", "").count("{") or \
            template.replace("{seed}", "").count("}"):
        fail(f"{at}: record {template!r}: use letters, digits, _ . + - and {{seed}}")
    if template == "report" or template.endswith(".remade"):  # the summary report.json; a remade run's record
        fail(f"{at}: record {template!r} is the name of a file the report writes itself: choose another")
