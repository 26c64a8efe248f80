#!/bin/bash
# Issue 19's readings over every committed seed, from the curves alone (docs/results.md):
#   bash docs/results/readings/make.sh     (from the repository root; a few minutes on 2 cores)
# Each reading is `bdrate.py CURVES -r REFERENCE`, paired by seed (95% Student-t interval across
# seeds, 95% paired bootstrap over the 24 Kodak images), into docs/results/readings/NAME/ (with
# points_psnr.md: where each arm's points land, mean ± sd over the seeds), and the same on the
# curves' Pareto fronts into docs/results/readings/front/NAME/ (only its mean rows printed); then
# the effective lambda of every arm over the seeds, from each seed's report
# (python -m hpcm.eval.trade_off); last, every reading in one table (summary.py -> summary.md).
# The Markdown and CSV files are committed with docs/results.md, and of the figures the ones it
# shows (.gitignore).
set -euo pipefail
cd "$(dirname "$0")/../../.."
F=docs/results/factorial
Q=docs/results/qp_finetune
T=docs/results/tuned
OUT=docs/results/readings
reading() {  # NAME CURVE_GLOB REFERENCE_GLOB: as designed, then on the curves' Pareto fronts
  local name=$1 curves=$2 reference=$3 seeds=" " files=() waiting=() f
  for f in $reference; do  # the seeds that have a reference curve (FILE_seedN.json)
    [[ $f =~ _seed([0-9]+)\.json$ ]] && seeds+="${BASH_REMATCH[1]} "
  done
  for f in $curves; do  # a curve is read once its seed's reference is committed too
    [[ $f =~ _seed([0-9]+)\.json$ ]] || continue
    if [[ $seeds == *" ${BASH_REMATCH[1]} "* ]]; then files+=("$f"); else waiting+=("$f"); fi
  done
  if [ ${#files[@]} -eq 0 ]; then
    echo "$name: no curves yet ($curves, $reference)"
    return
  fi
  echo "== $name"
  [ ${#waiting[@]} -eq 0 ] || echo "(not yet read: ${waiting[*]}: no reference of their seed)"
  { python bdrate.py "${files[@]}" -r "$reference" --out "$OUT/$name" || echo "$name failed"; } \
    | grep -v '^wrote'
  # The sensitivity reading: FAMO's short trainings can put two lambdas at one rate with the
  # quality dipping between them (no BD value as designed); scored as the BD-rate search scores
  # curves (Pareto fronts, from two points: docs/sweeps.md), every arm alike
  { python bdrate.py "${files[@]}" -r "$reference" --front --min-points 2 \
      --out "$OUT/front/$name" 2> /dev/null || echo "$name (front) failed"; } \
    | grep -v '^wrote' | grep -E '^\| \*\*|failed' || true
}
# The factorial (from scratch, each arm at its chosen lr): every arm against Adam in one table and
# figure, then each reading on its own
reading factorial_vs_adam "$F/seed*/eval/*_seed*.json" "$F/seed*/eval/adam_seed*.json"
reading adam_cautious_vs_adam "$F/seed*/eval/adam_cautious_seed*.json" "$F/seed*/eval/adam_seed*.json"
reading balanced_vs_adam "$F/seed*/eval/balanced_seed*.json" "$F/seed*/eval/adam_seed*.json"
reading famo_adam_vs_adam "$F/seed*/eval/famo_adam_seed*.json" "$F/seed*/eval/adam_seed*.json"
reading balanced_vs_adam_cautious "$F/seed*/eval/balanced_seed*.json" "$F/seed*/eval/adam_cautious_seed*.json"
reading famo_adam_vs_replay "$F/seed*/eval/famo_adam_seed*.json" "$F/seed*/eval/replay_famo_adam_seed*.json"
reading balanced_vs_replay "$F/seed*/eval/balanced_seed*.json" "$F/seed*/eval/replay_balanced_seed*.json"
# The study's best setting on held-out seeds, against the fixed arms extended upward
reading tuned_vs_adam "$T/seed*/balanced_tuned_seed*.json" "$T/seed*/adam_seed*.json"
reading tuned_vs_adam_cautious "$T/seed*/balanced_tuned_seed*.json" "$T/seed*/adam_cautious_seed*.json"
reading tuned_vs_balanced "$T/seed*/balanced_tuned_seed*.json" "$F/seed*/eval/balanced_seed*.json"
# QP fine-tuning against continuing the same models for the same steps
reading qp_vs_adam_continued "$Q/seed*/eval/balanced_qp_seed*.json" "$Q/seed*/eval/adam_seed*.json"
reading qp_vs_adam_cautious_continued "$Q/seed*/eval/balanced_qp_seed*.json" "$Q/seed*/eval/adam_cautious_seed*.json"
reading adam_cautious_vs_adam_continued "$Q/seed*/eval/adam_cautious_seed*.json" "$Q/seed*/eval/adam_seed*.json"
# Where every arm trained, over the seeds: the effective lambda from each seed's report
trade_off() {  # NAME CSV_GLOB
  if ! compgen -G "$2" > /dev/null; then echo "$1: no reports yet ($2)"; return; fi
  echo "== $1"
  python -m hpcm.eval.trade_off $2 --out "$OUT/$1" | grep -v '^written'
}
trade_off factorial_effective_lambda "$F/seed*/report/effective_lambda.csv"
trade_off tuned_effective_lambda "$T/seed*/effective_lambda.csv"
trade_off qp_effective_lambda "$Q/seed*/report/effective_lambda.csv"
# Every reading in one table (summary.md): per seed, the mean with both intervals, the answer
python docs/results/readings/summary.py
