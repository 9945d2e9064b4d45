"""The series case on real data (slow; needs ../shared/data/multi-domain/steam): three games of one series
added by text to a Steam model, a history of parts 1 and 2 must retrieve part 3 in the top 10.

Open (issue 14): not met yet. Measured with `scripts/sequel_probe.py` on Steam models trained 8 strided epochs
(seed 1): part 3 ranks 137th of 3,596 items (88th with `model.last_item_skip=true`); the top 10 are space games
(FTL, Stellaris, Star Trek Online, ...), so the text is understood, but the query points at popular items: the
adapted item vectors are anisotropic (mean cosine of random pairs 0.71) and new items carry no popularity.
Mixing the query with the last item's normalised vector at inference puts part 3 first, so the similarity is in
the item space; the fix must come from the model or the training. Tried since: the state as normalize(h) +
softplus(w) normalize(v_last) with w learned (``model.skip_gate=true``) and the text centred on the catalogue's
mean (``model.center_text=true``): part 3 ranks 22nd, but the model is worse (best valid NDCG@10 0.0314 at epoch 2
vs 0.0383; the learned weight stays at 0.98), records ``results/sequel-steam/steam-gatecenter-*.json``.
Pre-training helps most: Steam models fine-tuned (inductive, seeds 1-3) from the recipe pre-trained on the nine
other shared domains (leave-one-out report) rank part 3 13th / 11th / 5th of all items (in the list's top 10 for
seeds 2 and 3), the same runs from scratch 101st / 24th / 52nd (``results/sequel-steam/loo-steam-*-probe.json``).
The repeat offsets (``model.repeat_bias=true``, ``train.repeat_lr_scale=10``) do not do it either, although
a model that cannot push its logits of the history's own items down must aim its query away from them (and
so from their near-duplicates): part 3 ranks 121st, test NDCG@10 0.0389 vs 0.0367 without them (learned
w_last -0.25), records ``results/sequel-steam/steam-repeat-x10-s1*.json``; at 100x (``train.repeat_lr_scale=100``)
the offsets end at w_last -0.81 / w_hist -0.40 and part 3 ranks 93rd (parts 1 and 2 themselves 270th and
371st: the query still points away from the history), test NDCG@10 0.0408, records ``steam-repeat-x100-s1*.json``.
With ``train.history_negatives=offsets`` (the history's items teach only the offsets) part 3 ranks 72nd, test
NDCG@10 0.0359 (records ``steam-histoff-x10-s1*.json``).
This test still trains from scratch (a pre-training is ~35 min), so it stays an expected failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

STEAM = Path(__file__).parent.parent.parent / "shared" / "data" / "multi-domain" / "steam"
ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not STEAM.exists(), reason="needs ../shared/data/multi-domain/steam")
@pytest.mark.xfail(strict=True, reason="issue 14: part 3 ranks 137th (88th with the skip, 22nd gated); see docstring")
def test_sequel_is_retrieved_from_a_history_of_new_items(tmp_path: Path) -> None:
    def unisrec(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "unisrec", *args], check=True, capture_output=True, text=True)

    unisrec("prepare", str(STEAM), "--format", "csv", "--out", str(tmp_path / "steam"))
    unisrec("finetune", str(tmp_path / "steam"), "--mode", "inductive", "--seed", "1", "--epochs", "8",
            "--train.windows=strided", "--out", str(tmp_path / "run"))
    probe = subprocess.run([sys.executable, str(ROOT / "scripts" / "sequel_probe.py"), str(tmp_path / "run")],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stdout[-2000:]  # 0: part 3 is in the top 10
