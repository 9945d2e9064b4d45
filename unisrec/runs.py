"""Run folders: what a run was asked to do (``run.json``), and whether to start, resume or refuse."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unisrec.atomic import atomic_write_json, clean_stale
from unisrec.config import TextConfig, without_later_absent
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json_object
from unisrec.locking import hold_folder
from unisrec.train import clear_checkpoint


def fingerprint(settings: dict[str, Any]) -> str:
    """A short digest of a run's settings; its ``config`` counts without the later settings at their defaults
    (``unisrec.config.LATER_SETTINGS``), so that a run interrupted under an earlier version still resumes."""
    if isinstance(settings.get("config"), dict):
        settings = {**settings, "config": without_later_absent(settings["config"])}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# settings that change how a run reports its progress, not what it computes: a run interrupted under other values
# resumes (run.json keeps those it started with)
PRESENTATION_SETTINGS = ("config.train.progress", "config.train.log")


def setting_changes(made: dict[str, Any], settings: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted name, value in ``made``, value in ``settings``) of every setting that differs between a run.json
    and the settings of a run asked for now (``config`` without the later settings at their defaults); the
    fingerprint and origin of the run.json are not settings."""
    def plain(run: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in run.items() if k not in ("fingerprint", "origin")}
        if isinstance(kept.get("config"), dict):
            kept["config"] = without_later_absent(kept["config"])
        return kept

    changes: list[tuple[str, Any, Any]] = []

    def walk(before: Any, after: Any, name: str) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            for key in sorted(set(before) | set(after), key=str):
                walk(before.get(key), after.get(key), f"{name}.{key}" if name else str(key))
        elif before != after:
            changes.append((name, before, after))

    walk(plain(made), plain(settings), "")
    return changes


def _ignorable(name: str, command: Any) -> bool:
    """A change that does not stop a run from resuming: how it reports progress; a fine-tuning's ``pretrain``
    section (never read there: runs started before ``--pretrain.*`` was refused in fine-tuning, with a
    ``--config`` file's or a report's pre-training settings, still resume); a pre-training's ``eval`` section
    (it never validates)."""
    return name in PRESENTATION_SETTINGS or (command == "finetune" and name.startswith("config.pretrain.")) \
        or (command == "pretrain" and name.startswith("config.eval."))


def same_settings(made: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether the run.json ``made`` was written for ``settings``: the same fingerprint, or settings that differ
    only where a run may resume under other values (``_ignorable``; the run's checkpoints keep the fingerprint
    it started with: ``recorded_fingerprint``)."""
    if made.get("fingerprint") == fingerprint(settings):
        return True
    changes = setting_changes(made, settings)
    return all(_ignorable(name, settings.get("command")) for name, _, _ in changes)


def describe_changes(made: dict[str, Any], settings: dict[str, Any], limit: int = 4) -> str:
    """``train.epochs: 50 -> 40; text.pooling: 'mean' -> 'cls'``: what keeps a run from resuming."""
    changes = [c for c in setting_changes(made, settings) if not _ignorable(c[0], settings.get("command"))]
    told = [f"{name.removeprefix('config.')}: {json.dumps(before)} -> {json.dumps(after)}"
            for name, before, after in changes[:limit]]
    more = f"; and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(told) + more


def recorded_fingerprint(folder: Path, settings: dict[str, Any]) -> str:
    """The fingerprint a run's checkpoints carry: its run.json's (``same_settings`` chose to resume it), or that of
    ``settings`` for a folder without one."""
    made = folder / "run.json"
    recorded = read_json_object(made).get("fingerprint") if made.exists() else None
    return recorded if isinstance(recorded, str) else fingerprint(settings)


def staging_dir(out: Path) -> Path:
    """Where ``--overwrite`` trains the replacement of the run ``out`` (beside it, hidden)."""
    return out.parent / f".{out.name}.overwrite"


def run_dir_for(out: Path, *, overwrite: bool) -> Path:
    """The folder a run for ``out`` writes: the staging folder when it replaces an existing run."""
    return staging_dir(out) if overwrite and out.exists() and any(out.iterdir()) else out


def open_run_dir(out: Path, settings: dict[str, Any], *, overwrite: bool, create: bool = True,
                 origin: dict[str, Any] | None = None) -> Path:
    """Prepare the folder a run writes and return it: ``out`` itself, or with ``overwrite`` over an existing
    run its staging folder (``staging_dir(out)``), so that the old run stays whole and usable until the new one
    is moved in by ``finish_run_dir``. An interrupted run with the same settings (in ``out``, or in the staging
    folder with ``overwrite``) is resumed from its checkpoint.

    A finished run, or a folder holding something else, is never replaced without ``overwrite``.

    ``origin``: what the run's inputs were when it started beyond their paths (the fingerprint of the pre-trained
    run it starts from), kept in ``run.json`` apart from the settings: a run is resumed only from the same (an
    input trained again with other settings since is an error); runs written before it are not checked.
    """
    hold_folder(out)  # a second writer of ``out`` stops here: "... in use by process PID"
    recover_finish(out)
    clean_stale(out / "run.json")  # a kill while run.json was written leaves its temporary file (we hold the lock)
    if out.exists() and any(out.iterdir()) and not (out / "run.json").exists():
        verb = "refusing to overwrite it" if overwrite else "choose another --out"
        raise UnisrecError(f"{out}: folder exists and is not a unisrec run; {verb}")
    work = run_dir_for(out, overwrite=overwrite)
    started: dict[str, Any] | None = None  # the run.json of the unfinished run that resumes
    if work != out:
        started = _resumable(work, settings) if work.exists() else None
        if started is not None and _changed_origin(started, origin):
            started = None  # --overwrite: a replacement begun from other inputs starts again, not refused
        if work.exists() and started is None:
            shutil.rmtree(work)  # a replacement with other settings, or one that finished but was not moved in
    else:
        if overwrite:  # nothing to keep: a leftover staging folder of an earlier overwrite is stale
            shutil.rmtree(staging_dir(out), ignore_errors=True)
        if out.exists() and any(out.iterdir()):
            previous = read_json_object(out / "run.json", "pass --overwrite to start the run again")
            if (out / "metrics.json").exists():
                raise UnisrecError(f"{out}: run already finished; pass --overwrite to train it again")
            same = same_settings(previous, settings)
            if not same and _never_started(out):
                # a start that failed before its first step (a bad --init, a missing text model) left only its
                # run.json: nothing to keep, so the corrected command starts afresh instead of being refused
                _write_run_json(out, settings, origin)
                return work
            if not same:
                raise UnisrecError(
                    f"{out}: holds an unfinished run with different settings ({describe_changes(previous, settings)}); "
                    "run it with its own settings to resume it, or pass --overwrite, or choose another --out"
                )
            _check_origin(out, previous, origin)
            return work
    if started is not None:
        _check_origin(work, started, origin)
    elif create:
        work.mkdir(parents=True, exist_ok=True)
        _write_run_json(work, settings, origin)
    return work


def _write_run_json(folder: Path, settings: dict[str, Any], origin: dict[str, Any] | None) -> None:
    """What a run was asked to do: its settings, their fingerprint and its inputs' origin."""
    atomic_write_json(folder / "run.json",
                      {"fingerprint": fingerprint(settings), **settings, **({"origin": origin} if origin else {})})


ADOPTED = 2  # a run's folder choice beside 0 (in place) and 1 (staging): a finished replacement moved in


def adopt_finished_replacement(out: Path, settings: dict[str, Any], origin: dict[str, Any] | None = None) -> bool:
    """Move in a replacement of ``out`` with these settings that finished (its ``metrics.json`` written in the
    staging folder) but was killed before ``finish_run_dir`` moved it in; True when one was. ``--overwrite``
    calls it first, so that the same command run again completes the replacement instead of training it again.
    Its checkpoint, if the kill left one, is deleted; the caller writes what comes after ``metrics.json`` again
    (the card). A staged run with other settings or inputs is left to ``open_run_dir`` (which deletes it)."""
    hold_folder(out)
    if recover_finish(out):  # killed between finish_run_dir's renames: the replacement is at ``out`` now
        moved = read_json_object(out / "run.json", "pass --overwrite to start the run again")
        return same_settings(moved, settings) and not _changed_origin(moved, origin)
    work = staging_dir(out)
    if not ((work / "metrics.json").exists() and (work / "run.json").exists()):
        return False
    if out.exists() and any(out.iterdir()) and not (out / "run.json").exists():
        return False  # not a unisrec run: open_run_dir refuses to replace it
    made = read_json_object(work / "run.json", "pass --overwrite to start the run again")
    if not same_settings(made, settings) or _changed_origin(made, origin):
        return False
    clear_checkpoint(work)
    if out.exists():
        finish_run_dir(work, out)
    else:
        work.rename(out)
    return True


def run_origin(data_dirs: Sequence[str | Path], text: TextConfig | None) -> dict[str, Any]:
    """The content of a run's inputs beyond their paths (``open_run_dir``'s ``origin``): the dataset files (all
    of a pre-training's, in order) and, for a text model, the files of its language model. A run interrupted,
    then resumed after ``prepare --overwrite`` of its dataset or a changed model folder would otherwise go on
    silently, its epochs trained on two different inputs."""
    from unisrec.records import data_fingerprint
    from unisrec.text_model import model_fingerprint

    prints = [data_fingerprint(Path(d)) for d in data_dirs]
    origin: dict[str, Any] = {"data_fingerprint": prints[0] if len(prints) == 1 else
                              hashlib.sha256(json.dumps(prints).encode()).hexdigest()}
    if text is not None:
        origin["text_fingerprint"] = model_fingerprint(text)["digest"]
    return origin


# what each input of a run's ``origin`` is, in the refusal of a resume from changed inputs
ORIGIN_INPUTS = {
    "init_fingerprint": "the --init run (trained again with other settings)",
    "data_fingerprint": "the dataset's files (prepared again)",
    "text_fingerprint": "the text model's files",
}


def _changed_origin(started: dict[str, Any], origin: dict[str, Any] | None) -> list[str]:
    """The inputs (``open_run_dir``'s ``origin``) that differ from those the run ``started`` (its run.json)
    recorded; only those both hold (none for runs written before origins were kept, and an input added to origins
    later is not checked for runs started before)."""
    before = started.get("origin")
    if origin is None or not isinstance(before, dict):
        return []
    return sorted(k for k in set(before) & set(origin) if before.get(k) != origin.get(k))


def _check_origin(folder: Path, started: dict[str, Any], origin: dict[str, Any] | None) -> None:
    """An unfinished run resumes only from the inputs it started from (``open_run_dir``'s ``origin``);
    ``started``: the run's run.json."""
    changed = _changed_origin(started, origin)
    if changed:
        what = "; ".join(f"{ORIGIN_INPUTS.get(k, k)} changed since ({k})" for k in changed)
        raise UnisrecError(f"{folder}: its unfinished run started from other inputs: {what}; its epochs so far "
                           "trained on those; pass --overwrite to start it again")


def _never_started(folder: Path) -> bool:
    """Whether the run folder ``folder`` holds nothing but its run.json: no checkpoint, no epoch log, no weights."""
    return all(path.name == "run.json" for path in folder.iterdir())


def _resumable(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The run.json of the unfinished run with these settings that ``folder`` holds, else None."""
    if (folder / "metrics.json").exists() or not (folder / "run.json").exists():
        return None
    previous = read_json_object(folder / "run.json", "pass --overwrite to start the run again")
    return previous if same_settings(previous, settings) else None


def recover_finish(out: Path) -> bool:
    """Complete a ``finish_run_dir`` that a kill interrupted (call it holding ``out``'s lock): killed between its
    renames, ``out`` is missing and the old run waits aside; the finished replacement, still in the staging
    folder, is moved in (an unfinished one cannot be there: ``finish_run_dir`` runs after the run ended), or else
    the old run goes back. Killed after them, the old run aside is deleted. True when the replacement is at
    ``out`` now (moved in here, or by the interrupted call), False when nothing was interrupted or the old run
    went back."""
    old = out.parent / f".{out.name}.replaced"
    if not old.exists():
        return False
    if not out.exists():
        staged = staging_dir(out)
        if (staged / "metrics.json").exists():
            staged.rename(out)
        else:
            old.rename(out)
            return False
    shutil.rmtree(old, ignore_errors=True)
    return True


def finish_run_dir(work: Path, out: Path) -> None:
    """Move a finished replacement run ``work`` into ``out`` (no-op when the run was written in place).

    ``out`` is renamed aside, ``work`` renamed in, then the old run deleted: at every moment one whole run is
    at ``out`` or aside it, and a failed second rename puts the old run back.
    """
    if work == out:
        return
    old = out.parent / f".{out.name}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        work.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
