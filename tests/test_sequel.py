"""The series case on real data (slow; needs the ten folders of ../shared/data/multi-domain): three games of one
series added by text to a Steam model, a history of parts 1 and 2 must retrieve part 3 in the top 10.

Met by pre-training (issue 14), not by anything in serving. The test follows a user's path: the recipe's
universal model (``unisrec pretrain``'s defaults on the ten shared domains, Steam among them; about 90 min on 2 cores
with the encoding), then the inductive fine-tuning on Steam (8 strided epochs, seed 1), then
``scripts/sequel_probe.py``. ``UNISREC_SEQUEL_INIT=RUN_DIR`` reuses a universal model already made by that
command (e.g. the Scientific report's ``pretrain/all-e4/seed-0``): 12.7 min. Measured (records in
``results/sequel-steam/``):

- from the universal model (``all-e4``, 4 epochs): part 3 ranks 2nd / 3rd / 2nd of all 3,596 items for seeds
  1-3, first of the list every time, 0.6-1.3 logits above the list's 10th (``sequel-e4-s*``);
- the pre-trained models alone (zero-shot, ten domains at 2 or 4 epochs, Steam + Amazon 2018 Games): part 3
  first of the list;
- from the recipe on Steam + Amazon 2018 Games only (785 steps): part 3 3rd of all items on one thread
  (``sequel-steamgame-s1*``) but 17th with two threads, the validation scores equal to 4 digits: the fine-tuning
  forgets the series in one run of two, so two domains are not enough for a test;
- from the recipe on Steam alone (188 steps): 53rd (``sequel-steampre-s1*``);
- from scratch: 137th (valid 0.0383, ``steam-strided-inductive-s1.json``); nor did the changes tried from scratch
  reach the top 10: the last-item skip (88th), a learned gate with centred text (22nd, a worse model), the repeat
  offsets at 10x / 100x lr (121st / 93rd), the history's items teaching only the offsets (72nd). From scratch the
  query points at the popular space games and new items carry no popularity; pre-training across domains teaches
  the adaptor and encoder that a history's near-duplicates are likely next.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent.parent.parent / "shared" / "data" / "multi-domain"
DOMAINS = ["amazon2014-beauty", "amazon2014-book", "amazon2014-clothing", "amazon2014-electronic",
           "amazon2014-health", "amazon2018-electronic", "amazon2018-game", "food", "movielens-1m", "steam"]
INIT = os.environ.get("UNISREC_SEQUEL_INIT")
ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (DATA / "steam").exists() or (INIT is None and not all((DATA / d).exists() for d in DOMAINS)),
                    reason="needs the ten folders of ../shared/data/multi-domain (or UNISREC_SEQUEL_INIT and steam)")
def test_sequel_is_retrieved_from_a_history_of_new_items(tmp_path: Path) -> None:
    def unisrec(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "unisrec", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]

    for domain in ([] if INIT else DOMAINS[:-1]) + ["steam"]:
        unisrec("prepare", str(DATA / domain), "--format", "csv", "--out", str(tmp_path / domain))
    if INIT is None:
        unisrec("pretrain", *(str(tmp_path / d) for d in DOMAINS), "--out", str(tmp_path / "universal"))
    init = INIT or str(tmp_path / "universal")
    unisrec("finetune", str(tmp_path / "steam"), "--mode", "inductive", "--seed", "1", "--epochs", "8",
            "--train.windows=strided", "--init", init, "--out", str(tmp_path / "run"))
    probe = subprocess.run([sys.executable, str(ROOT / "scripts" / "sequel_probe.py"), str(tmp_path / "run")],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stdout[-2000:]  # 0: part 3 is in the top 10 (history excluded)
