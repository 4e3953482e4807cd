#!/usr/bin/env bash
# Every family at growing training budgets, one report: FD (and KID) against training minutes.
#
#   bash launch/compare.sh                       # budgets 5 10 20 40 CPU-minutes per family (~6 h on 2 cores)
#   BUDGETS="0.5 1" NUM=200 TRAIN_LIMIT=5000 bash launch/compare.sh   # a short pass through the same steps
#   OUT=docs/report FAMILIES="ldm pixel gan" bash launch/compare.sh
#
# Each family trains once, resuming (not restarting) at every budget: after budget B its model is
# saved as OUT/models/FAMILY@B and training continues from that checkpoint to the next budget.
# Families: ldm (latent diffusion on the KL-f4 latents), pixel (the same UNet family on pixels),
# gan, flow, ar (pixel autoregressive), and vae (the stage-1 autoencoder's prior, one row).
# The report (report.md with the verdict table, curves.png, sampling.png, sample grids) and the
# commands it ran (commands.txt) are written to OUT. A pass with BUDGETS="0.3 0.6" TRAIN_LIMIT=3000
# ran every step up to the report here; the report's AR rows (1,024 sampling steps per image) are
# its slowest part on a CPU: lower NUM for short passes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUDGETS="${BUDGETS:-5 10 20 40}"
FAMILIES="${FAMILIES:-ldm pixel gan flow ar}"
OUT="${OUT:-docs/report}"
WORK="${WORK:-outputs/compare}"
NUM="${NUM:-500}"
TRAIN_LIMIT="${TRAIN_LIMIT:-}"  # pack only the first N training images (default: all 60000)
LDM_STEPS="${LDM_STEPS:-50,25,10}"
AE_MINUTES="${AE_MINUTES:-5}"
LDM="${LDM:-$ROOT/.venv/bin/ldm}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch_extensions}"
mkdir -p "$OUT" "$WORK/models"
LOG="$OUT/commands.txt"
: > "$LOG"
run() { echo "$*" >> "$LOG"; echo "+ $*"; "$@"; }

DATA="$WORK/data"
[ -f "$DATA/train/manifest.json" ] || run "$LDM" data pack builtin:fashion-mnist "$DATA/train" --image-size 32 --split train \
  ${TRAIN_LIMIT:+--limit "$TRAIN_LIMIT"}
[ -f "$DATA/test/manifest.json" ] || run "$LDM" data pack builtin:fashion-mnist "$DATA/test" --image-size 32 --split test

# the classifier behind the report's class-accuracy column (its test accuracy is the ceiling)
[ -f "$WORK/classifier/classifier.json" ] || run "$LDM" eval train-classifier "$DATA/train" --test-shards "$DATA/test" \
  --out "$WORK/classifier"

needs_ae=0
for f in $FAMILIES; do [ "$f" = ldm ] && needs_ae=1; done
if [ "$needs_ae" = 1 ] && [ ! -f "$WORK/stage1/autoencoder/autoencoder.json" ]; then
  run "$LDM" train-ae --config configs/autoencoder/fmnist-kl-f4.yaml --set "data.shards=$DATA/train" \
    --set "train.out_dir=$WORK/stage1" --set "train.max_minutes=$AE_MINUTES" --set train.steps=1000000
fi
if [ "$needs_ae" = 1 ] && [ ! -f "$WORK/latents/manifest.json" ]; then
  run "$LDM" data encode --autoencoder "$WORK/stage1/autoencoder" "$DATA/train" "$WORK/latents" --overwrite
fi

# train FAMILY to the next budget (resuming after the first), then keep its model as FAMILY@BUDGET
train_to() {
  local family="$1" minutes="$2" resume="$3" run_dir="$WORK/runs/$1"
  local common=(--set "train.out_dir=$run_dir" --set "train.max_minutes=$minutes" --set train.steps=1000000
                --set train.lr.schedule=constant --set train.checkpoint.every=1000000)
  [ "$resume" = 1 ] && common+=(--resume latest)
  case "$family" in
    ldm)   run "$LDM" train --config configs/ldm/fmnist-kl-f4.yaml --set "data.shards=$WORK/latents" "${common[@]}" ;;
    pixel) run "$LDM" train --config configs/ldm/fmnist-pixel.yaml --set "data.shards=$DATA/train" "${common[@]}" ;;
    gan|flow|ar)
           run "$LDM" train-baseline "$family" --config "configs/baselines/$family-fmnist.yaml" \
             --set "data.shards=$DATA/train" "${common[@]}" ;;
    *) echo "unknown family $family (ldm pixel gan flow ar)" >&2; exit 2 ;;
  esac
}

models=()
for family in $FAMILIES; do
  done_minutes=0
  resume=0
  for budget in $BUDGETS; do
    inc=$(python3 -c "print(max(0.1, $budget - $done_minutes))")
    train_to "$family" "$inc" "$resume"
    dest="$WORK/models/$family@$budget"
    rm -rf "$dest"
    case "$family" in
      ldm|pixel) run "$LDM" export "$WORK/runs/$family" "$dest" ;;
      *) run cp -r "$WORK/runs/$family/model" "$dest" ;;
    esac
    models+=("$family@$budget=$dest")
    done_minutes=$budget
    resume=1
  done
done
[ "$needs_ae" = 1 ] && models+=("vae=$WORK/stage1/autoencoder")

run "$LDM" report "${models[@]}" --test-shards "$DATA/test" --train-shards "$DATA/train" --num "$NUM" \
  --ldm-steps "$LDM_STEPS" --classifier "$WORK/classifier" --out "$OUT"
echo "report: $OUT/report.md"
