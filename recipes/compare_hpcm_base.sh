#!/usr/bin/env bash
# Does Balanced R-D beat Adam for HPCM-Base? The GPU-scale comparison (docs/compare.md), ready for
# the day a GPU is lent. Run one recipe with  bash recipes/compare_hpcm_base.sh RECIPE
#
#   finetune  every optimizer x the six official lambdas x 3 seeds, each run fine-tuned from the
#             official HPCM-Base checkpoint of its lambda (experiment=finetune: lr 5e-5, 50 epochs,
#             x0.1 for the last 10): the setting of the paper's second method.
#   scratch   every optimizer x 4 lambdas x 3 seeds from scratch, on a shortened schedule (300
#             epochs, the official milestones scaled to it).
#   factorial_pilot, factorial_lr, factorial   the design of experiment=factorial_cpu (docs/compare.md,
#             "From scratch") for hpcm_base on the same 300-epoch schedule, in three stages:
#             factorial_pilot  adam and balanced on the fixed grid, seed 0: where FAMO's effective
#                              lambda lands (SWEEP/report/effective_lambda.md); choose the FAMO
#                              grid from it and export FAMO_GRID=[l1,l2,l3,l4]
#             factorial_lr     the four trained arms x 3 learning rates (5e-5, 1e-4, 2e-4) at the
#                              grid's third lambda, seed 100, validated on VAL_DIR (not the test
#                              set); export the chosen LR_ADAM LR_CAUTIOUS LR_FAMO_ADAM LR_BALANCED
#                              (SWEEP/report/lr_search.json)
#             factorial        {adam, cautious} x {fixed, FAMO} + 2 replay twins x 4 lambdas x 4 seeds
#
# Needs: TRAIN_DIR / TEST_DIR (Flickr2W train and Kodak, CompressAI layout), and for finetune
# CKPT_DIR holding the official checkpoints as HPCM_Base_<lambda>.pth.tar (rename if needed).
# Each run is one GPU; with several GPUs use the SLURM launcher (docs/sweeps.md) or trainer=ddp.
#
# Cost per run on one GPU, from the step times measured on an H200 (docs/scale.md, "Measured on
# an H200"; hpcm_base, batch 32 at 256x256, bf16 autocast, eager): adam 103 ms per step, balanced
# (exact mode) 1.23x that; balanced_qp's ratio is the CPU's (1.68x, not measured on a GPU).
# Flickr2W's ~20k images are ~650 steps per epoch at batch 32.
#   finetune: 50 epochs = 32.5k steps: adam ~56 min, balanced ~69 min, balanced_qp ~94 min;
#             54 runs ~66 GPU-hours.
#   scratch:  300 epochs = 195k steps: adam ~5.6 h, balanced ~6.9 h, balanced_qp ~9.4 h;
#             36 runs ~260 GPU-hours (the official 3001 epochs would be ten times that).
#   factorial (300 epochs, replay twins cost as adam): pilot 8 runs ~50 GPU-hours; lr search 12
#             runs ~75 GPU-hours; the factorial's 96 runs (per seed 8 adam-like, 8 FAMO, 8 replay)
#             ~575 GPU-hours, ~700 in all; a 100-epoch schedule (trainer.epochs=100) is a third.
# trainer.compile=true measured 0.70x of the eager bf16 step after ~2 minutes of compilation.
#
set -euo pipefail
cd "$(dirname "$0")/.."
recipe="${1:?usage: bash recipes/compare_hpcm_base.sh finetune|scratch|factorial_pilot|factorial_lr|factorial}"
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
  factorial_pilot)
    python train.py -m experiment=factorial trainer=hpcm trainer.epochs=300 "${common[@]}" \
      optimizer=adam,balanced seed=0 'factorial.lambdas.famo=${factorial.lambdas.fixed}' \
      '~hydra.callbacks.compare' "hydra.sweep.dir=multirun/factorial_hpcm_base_pilot"
    python -m hpcm.eval.trade_off multirun/factorial_hpcm_base_pilot
    ;;
  factorial_lr)
    : "${VAL_DIR:?set VAL_DIR (a selection set, not the test set)}" "${FAMO_GRID:?set FAMO_GRID}"
    python train.py -m experiment=factorial_lr trainer=hpcm trainer.epochs=300 "${common[@]}" \
      "data.test_dir=$VAL_DIR" data.test_crop_size=512 "factorial.lambdas.famo=$FAMO_GRID" \
      "hydra.sweep.dir=multirun/factorial_lr_hpcm_base"
    ;;
  factorial)
    : "${FAMO_GRID:?set FAMO_GRID}" "${LR_ADAM:?set LR_ADAM}" "${LR_CAUTIOUS:?set LR_CAUTIOUS}"
    : "${LR_FAMO_ADAM:?set LR_FAMO_ADAM}" "${LR_BALANCED:?set LR_BALANCED}"
    python train.py -m experiment=factorial trainer=hpcm trainer.epochs=300 "${common[@]}" \
      "factorial.lambdas.famo=$FAMO_GRID" "factorial.lr.adam=$LR_ADAM" \
      "factorial.lr.adam_cautious=$LR_CAUTIOUS" "factorial.lr.famo_adam=$LR_FAMO_ADAM" \
      "factorial.lr.balanced=$LR_BALANCED" "hydra.sweep.dir=multirun/factorial_hpcm_base"
    ;;
  *)
    echo "error: unknown recipe '$recipe' (finetune, scratch, factorial_pilot, factorial_lr or factorial)" >&2
    exit 2
    ;;
esac
