#!/usr/bin/env bash
# Every family at growing training budgets, one report: FD (and KID) against training minutes.
#
#   bash launch/compare.sh                       # budgets 5 10 20 40 CPU-minutes per family (~6 h on 2 cores)
#   BUDGETS="0.5 1" NUM=200 TRAIN_LIMIT=5000 bash launch/compare.sh   # a short pass through the same steps
#   OUT=docs/report FAMILIES="ldm pixel gan" bash launch/compare.sh
#
# Budgets are CPU-minutes (train.budget_clock=cpu: the process's CPU time over its threads), so other
# work on the machine does not shorten a family's training.
# Each family trains once, resuming (not restarting) at every budget: after budget B its model is
# saved as OUT/models/FAMILY@B and training continues from that checkpoint to the next budget.
# Families: ldm (latent diffusion on the KL-f4 latents), pixel (the same UNet family on pixels),
# gan, flow, ar (pixel autoregressive), vq-ar (autoregressive over VQ-f4 code indices; its VQ stage 1
# trains for AE_MINUTES first). The LDM's KL-f4 stage 1 is also scored as a generator (row "vae": its
# prior through its decoder); the family vae trains a VAE as a generator (configs/autoencoder/fmnist-vae.yaml,
# the ELBO as its loss) for AE_MINUTES, one row "vae-elbo".
# The f trade-off: ldm-f2 and ldm-f8 are the LDM on KL-f2 and KL-f8 latents (each stage 1 trained for
# AE_MINUTES like the f=4 one); with pixel (f = 1) and ldm (f = 4) the report draws tradeoff.png.
# SEEDS="0 1 2" trains each family once per seed (train.seed and data.seed): seed 0 is FAMILY@B, the
# others FAMILY@B#SEED, and the report's verdict table reads the FD spread across them.
# The report covers every model under WORK/models, including earlier passes'; scores are cached in
# WORK/scores, so a grown comparison samples only its new models. The report (report.md with the
# verdict table, curves.png, sampling.png, sample grids) is written to OUT, and every pass appends
# the commands it ran to OUT/commands.txt. A pass with BUDGETS="0.3 0.6" TRAIN_LIMIT=3000
# ran every step up to the report here; the report's AR rows (1,024 sampling steps per image) are
# its slowest part on a CPU: lower NUM for short passes.
set -euo pipefail
{  # the whole script is read before it runs: editing it during a pass cannot change that pass
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUDGETS="${BUDGETS:-5 10 20 40}"
FAMILIES="${FAMILIES:-ldm pixel gan flow ar vq-ar vae}"
SEEDS="${SEEDS:-0}"
OUT="${OUT:-docs/report}"
WORK="${WORK:-outputs/compare}"
NUM="${NUM:-500}"
TRAIN_LIMIT="${TRAIN_LIMIT:-}"  # pack only the first N training images (default: all 60000)
LDM_STEPS="${LDM_STEPS:-50,25,10}"
AE_MINUTES="${AE_MINUTES:-5}"
REPORT="${REPORT:-1}"           # REPORT=0: train and save models only (a later pass writes the report)
LDM="${LDM:-$ROOT/.venv/bin/ldm}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch_extensions}"
mkdir -p "$OUT" "$WORK/models"
LOG="$OUT/commands.txt"
echo "# pass of $(date -u +%Y-%m-%dT%H:%MZ): BUDGETS=\"$BUDGETS\" FAMILIES=\"$FAMILIES\" SEEDS=\"$SEEDS\"" >> "$LOG"
run() { echo "$*" >> "$LOG"; echo "+ $*"; "$@"; }

DATA="$WORK/data"
[ -f "$DATA/train/manifest.json" ] || run "$LDM" data pack builtin:fashion-mnist "$DATA/train" --image-size 32 --split train \
  ${TRAIN_LIMIT:+--limit "$TRAIN_LIMIT"}
[ -f "$DATA/test/manifest.json" ] || run "$LDM" data pack builtin:fashion-mnist "$DATA/test" --image-size 32 --split test

# the classifier behind the report's class-accuracy column (its test accuracy is the ceiling)
[ -f "$WORK/classifier/classifier.json" ] || run "$LDM" eval train-classifier "$DATA/train" --test-shards "$DATA/test" \
  --out "$WORK/classifier"

# a family's stage 1, "CONFIG FOLDER": the KL-f4 autoencoder of the LDM (and of the VAE row), the f
# trade-off's KL-f2 and KL-f8, the VQ-f4 of vq-ar; each trains for AE_MINUTES once, then LDMs get latents
stage1_of() {
  case "$1" in
    ldm) echo "fmnist-kl-f4 stage1" ;;
    ldm-f2|ldm-f8) echo "fmnist-kl-${1#ldm-} stage1-${1#ldm-}" ;;
    vq-ar) echo "fmnist-vq-f4 stage1-vq" ;;
    vae) echo "fmnist-vae stage1-vae" ;;
  esac
}
for family in $FAMILIES; do
  stage1="$(stage1_of "$family")"
  [ -n "$stage1" ] || continue
  config="${stage1% *}" dir="${stage1#* }"
  [ -f "$WORK/$dir/autoencoder/autoencoder.json" ] || run "$LDM" train-ae --config "configs/autoencoder/$config.yaml" \
    --set "data.shards=$DATA/train" --set "train.out_dir=$WORK/$dir" --set "train.max_minutes=$AE_MINUTES" \
    --set train.steps=1000000 --set train.budget_clock=cpu
  latents="$WORK/latents${dir#stage1}"  # stage1 → latents, stage1-f2 → latents-f2
  case "$family" in vq-ar|vae) continue ;; esac  # no latent diffusion on these: no latents to encode
  [ -f "$latents/manifest.json" ] || run "$LDM" data encode --autoencoder "$WORK/$dir/autoencoder" "$DATA/train" \
    "$latents" --overwrite
done

# train FAMILY (at SEED) to the next budget (resuming after the first), then keep its model as FAMILY@BUDGET
train_to() {
  local family="$1" minutes="$2" resume="$3" seed="$4" run_dir
  run_dir="$(run_dir "$family" "$seed")"
  local common=(--set "train.out_dir=$run_dir" --set "train.max_minutes=$minutes" --set train.steps=1000000
                --set train.lr.schedule=constant --set train.checkpoint.every=1000000 --set train.budget_clock=cpu
                --set "train.seed=$seed" --set "data.seed=$seed")
  [ "$resume" = 1 ] && common+=(--resume latest)
  case "$family" in
    ldm)   run "$LDM" train --config configs/ldm/fmnist-kl-f4.yaml --set "data.shards=$WORK/latents" "${common[@]}" ;;
    ldm-f2|ldm-f8)  # the LDM's UNet and schedule on 16x16 or 4x4 latents
           local f="${family#ldm-f}"
           run "$LDM" train --config configs/ldm/fmnist-kl-f4.yaml --set "data.shards=$WORK/latents-f$f" \
             --set "unet.sample_size=$((32 / f))" "${common[@]}" ;;
    pixel) run "$LDM" train --config configs/ldm/fmnist-pixel.yaml --set "data.shards=$DATA/train" "${common[@]}" ;;
    gan|flow|ar)
           run "$LDM" train-baseline "$family" --config "configs/baselines/$family-fmnist.yaml" \
             --set "data.shards=$DATA/train" "${common[@]}" ;;
    vq-ar) run "$LDM" train-baseline vq-ar --config configs/baselines/vq-ar-fmnist.yaml \
             --set "data.shards=$DATA/train" --set "autoencoder=$WORK/stage1-vq/autoencoder" "${common[@]}" ;;
    *) echo "unknown family $family (ldm ldm-f2 ldm-f8 pixel gan flow ar vq-ar vae)" >&2; exit 2 ;;
  esac
}

# seed 0 keeps the plain names (runs/FAMILY, FAMILY@B); another seed adds #SEED to both
run_dir() { [ "$2" = 0 ] && echo "$WORK/runs/$1" || echo "$WORK/runs/$1#$2"; }
model_name() { [ "$3" = 0 ] && echo "$1@$2" || echo "$1@$2#$3"; }

for seed in $SEEDS; do
  for family in $FAMILIES; do
    [ "$family" = vae ] && continue  # its stage 1 is the model: no budgets
    done_minutes=0
    resume=0
    for budget in $BUDGETS; do
      inc=$(python3 -c "print(max(0.1, $budget - $done_minutes))")
      name="$(model_name "$family" "$budget" "$seed")"
      dest="$WORK/models/$name"
      if [ -f "$dest/.complete" ]; then  # an earlier pass (stopped later on) reached this budget
        echo "= $name: saved by an earlier pass"
      else
        train_to "$family" "$inc" "$resume" "$seed"
        rm -rf "$dest"
        case "$family" in
          ldm|ldm-f*|pixel) run "$LDM" export "$(run_dir "$family" "$seed")" "$dest" ;;
          *) run cp -r "$(run_dir "$family" "$seed")/model" "$dest" ;;
        esac
        touch "$dest/.complete"
      fi
      done_minutes=$budget
      resume=1
    done
  done
done
# the report covers every model saved under WORK/models, so a comparison can grow pass by pass
# (another family, another seed) and `--cache` re-scores only what is new
models=()
for dest in "$WORK"/models/*/; do
  [ -d "$dest" ] || continue  # no models yet (a pass of the vae family alone): the glob stays unexpanded
  dest="${dest%/}"; models+=("$(basename "$dest")=$dest")
done
[ -f "$WORK/stage1/autoencoder/autoencoder.json" ] && models+=("vae=$WORK/stage1/autoencoder")
[ -f "$WORK/stage1-vae/autoencoder/autoencoder.json" ] && models+=("vae-elbo=$WORK/stage1-vae/autoencoder")

[ "$REPORT" = 1 ] || { echo "models in $WORK/models (REPORT=0: no report)"; exit 0; }
run "$LDM" report "${models[@]}" --test-shards "$DATA/test" --train-shards "$DATA/train" --num "$NUM" \
  --ldm-steps "$LDM_STEPS" --classifier "$WORK/classifier" --cache "$WORK/scores" --out "$OUT"
echo "report: $OUT/report.md"
exit 0
}
