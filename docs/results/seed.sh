#!/bin/bash
# One piece of issue 19's experiments for one seed, run and collected into docs/results/:
#
#   BSDS500=DIR KODAK=DIR bash docs/results/seed.sh PART SEED      (from the repository root)
#
# PART (each a sweep that resumes where it stopped on the same machine; each takes 2 cores):
#   factorial    experiment=factorial_cpu, the 24 runs of one seed (~110 min on 2 idle cores)
#                -> docs/results/factorial/seedS/{eval,report}
#   qp           experiment=qp_finetune_cpu on that seed's adam runs, which must lie in this
#                machine's WORK (run after `factorial` of the same seed; ~31 min)
#                -> docs/results/qp_finetune/seedS/{eval,report}
#   tuned        the study's best setting as `balanced_tuned` on the FAMO grid (~25 min)
#                -> docs/results/tuned/seedS/balanced_tuned_seedS.json
#   tuned_fixed  adam and adam_cautious at 0.001 and 0.0015, joined to the factorial's curves of
#                the seed (needs docs/results/factorial/seedS; ~15 min)
#                -> docs/results/tuned/seedS/{adam,adam_cautious}_seedS.json
#
# Every seed trains with the code that trained seed 0: commit d85cc23 with the factorial's lrs and
# arms of ae67b45 (conf/experiment/factorial/{cpu,arms}.yaml), checked out once into
# WORK/code (WORK defaults to runs/issue19, which git ignores). The READMEs of the folders above
# say what each seed's files are; docs/results/readings/make.sh reads them all.
set -euo pipefail
PART=${1:?PART: factorial, qp, tuned or tuned_fixed} S=${2:?SEED}
: "${BSDS500:?set BSDS500 to the BSDS500 training folder}" "${KODAK:?set KODAK to the Kodak folder}"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mkdir -p "${WORK:-$ROOT/runs/issue19}" && cd "${WORK:-$ROOT/runs/issue19}" && pwd)
CODE=$WORK/code
G=0.0012022983166419944 W=0.007462992023649677  # docs/results/gamma_wlr_study: the best trial
if [ ! -d "$CODE" ]; then
  git -C "$ROOT" worktree add --detach "$CODE" d85cc23
  for f in cpu arms; do
    git -C "$ROOT" show "ae67b45:conf/experiment/factorial/$f.yaml" > "$CODE/conf/experiment/factorial/$f.yaml"
  done
fi
export OMP_WAIT_POLICY=PASSIVE  # two single-thread runs at a time: no spinning between steps
DATA=(seed="$S" data.train_dir="$BSDS500" data.test_dir="$KODAK")

collect() {  # SWEEP DEST: the sweep's curves named by seed, its per-image values and report
  local sweep=$1 dest=$2 name
  mkdir -p "$dest/eval"
  for f in "$sweep"/eval/*.json; do
    name=$(basename "$f" .json)
    cp "$f" "$dest/eval/${name%_seed$S}_seed$S.json"
  done
  cp "$sweep/eval/per_image.csv" "$dest/eval/"
  rm -rf "$dest/report" && cp -r "$sweep/report" "$dest/report"
}

cd "$CODE"
case $PART in
  factorial)
    python train.py -m experiment=factorial_cpu "${DATA[@]}" hydra.sweep.dir="$WORK/factorial/seed$S"
    collect "$WORK/factorial/seed$S" "$ROOT/docs/results/factorial/seed$S"
    ;;
  qp)
    python train.py -m experiment=qp_finetune_cpu "${DATA[@]}" \
      qp_finetune.source="$WORK/factorial/seed$S" hydra.sweep.dir="$WORK/qp/seed$S"
    collect "$WORK/qp/seed$S" "$ROOT/docs/results/qp_finetune/seed$S"
    ;;
  tuned)
    python train.py -m experiment=factorial_cpu "${DATA[@]}" optimizer=balanced \
      optimizer.name=balanced_tuned optimizer.balancer.gamma=$G optimizer.balancer.w_lr=$W \
      hydra.sweep.dir="$WORK/tuned/seed$S"
    # the sweep has no adam to report against: its effective lambda is reported on its own
    dest=$ROOT/docs/results/tuned/seed$S
    mkdir -p "$dest"
    cp "$WORK/tuned/seed$S/eval/balanced_tuned.json" "$dest/balanced_tuned_seed$S.json"
    cp "$WORK/tuned/seed$S/eval/per_image.csv" "$dest/"
    (cd "$ROOT" && python -m hpcm.eval.trade_off "$WORK/tuned/seed$S" --out "$dest" > /dev/null)
    rm "$dest/effective_lambda.md" "$dest/effective_lambda.png"  # the CSV says it all for a seed
    ;;
  tuned_fixed)
    factorial=$ROOT/docs/results/factorial/seed$S/eval
    [ -d "$factorial" ] || { echo "error: $factorial: run (and collect) factorial $S first" >&2; exit 1; }
    python train.py -m experiment=factorial_cpu "${DATA[@]}" optimizer=adam,adam_cautious \
      'factorial.lambdas.fixed=[0.00025,0.00035,0.0005,0.0006,0.001,0.0015]' "point='4','5'" \
      hydra.sweep.dir="$WORK/tuned_fixed/seed$S"
    for arm in adam adam_cautious; do
      (cd "$ROOT" && python -m hpcm.eval.merge "$factorial/${arm}_seed$S.json" \
        "$WORK/tuned_fixed/seed$S/eval/$arm.json" -o "docs/results/tuned/seed$S/${arm}_seed$S.json")
    done
    ;;
  *) echo "error: PART must be factorial, qp, tuned or tuned_fixed, not $PART" >&2; exit 2 ;;
esac
echo "seed $S, $PART: done; collected into docs/results (see the folder's README)"
