#!/usr/bin/env bash
# Does Balanced R-D beat Adam for HPCM-Base? The GPU-scale comparison (docs/compare.md), ready for
# the day a GPU is lent. Two recipes; run one with  bash recipes/compare_hpcm_base.sh finetune|scratch
#
#   finetune  every optimizer x the six official lambdas x 3 seeds, each run fine-tuned from the
#             official HPCM-Base checkpoint of its lambda (experiment=finetune: lr 5e-5, 50 epochs,
#             x0.1 for the last 10): the setting of the paper's second method.
#   scratch   every optimizer x 4 lambdas x 3 seeds from scratch, on a shortened schedule (300
#             epochs, the official milestones scaled to it).
#
# Needs: TRAIN_DIR / TEST_DIR (Flickr2W train and Kodak, CompressAI layout), and for finetune
# CKPT_DIR holding the official checkpoints as HPCM_Base_<lambda>.pth.tar (rename if needed).
# Each run is one GPU; with several GPUs use the SLURM launcher (docs/sweeps.md) or trainer=ddp.
#
# Estimated cost per run on one H100, NOT measured yet (no GPU has been lent to this project):
# from ~120 GFLOP per 256x256 forward of hpcm_base, a batch-32 step is ~11.5 TFLOP (Balanced exact
# +3.8 for its no-grad re-forward), i.e. ~75 ms for adam at a plausible 40% of bf16 peak; balanced
# x1.26 and balanced_qp x1.68 of that (the CPU ratios of benchmarks/train_step.py). Flickr2W's
# ~20k images are ~650 steps per epoch at batch 32.
#   finetune: 50 epochs = 32k steps: adam ~40 min, balanced ~51 min, balanced_qp ~68 min;
#             54 runs ~48 GPU-hours.
#   scratch:  300 epochs = 195k steps: adam ~4.1 h, balanced ~5.1 h, balanced_qp ~6.8 h;
#             36 runs ~190 GPU-hours (the official 3001 epochs would be ten times that).
# Replace these with measured step times: bash benchmarks/gpu_check.sh (batch-32 rows).
set -euo pipefail
cd "$(dirname "$0")/.."
recipe="${1:?usage: bash recipes/compare_hpcm_base.sh finetune|scratch}"
: "${TRAIN_DIR:?set TRAIN_DIR}" "${TEST_DIR:?set TEST_DIR}"
common=(
  model=hpcm_base data=folder "data.train_dir=$TRAIN_DIR" "data.test_dir=$TEST_DIR"
  data.batch_size=32 data.num_workers=8 trainer.autocast_bf16=true logger.mode=offline
)
case "$recipe" in
  finetune)
    : "${CKPT_DIR:?set CKPT_DIR (official HPCM-Base checkpoints)}"
    python train.py -m 'experiment=[compare,finetune]' "${common[@]}" \
      lmbda=0.0018,0.0035,0.0067,0.013,0.025,0.0483 \
      "init_from='$CKPT_DIR/HPCM_Base_\${lmbda}.pth.tar'" \
      "hydra.sweep.dir=multirun/compare_hpcm_base_finetune"
    ;;
  scratch)
    python train.py -m experiment=compare trainer=hpcm trainer.epochs=300 "${common[@]}" \
      "hydra.sweep.dir=multirun/compare_hpcm_base_scratch"
    ;;
  *)
    echo "error: unknown recipe '$recipe' (finetune or scratch)" >&2
    exit 2
    ;;
esac
