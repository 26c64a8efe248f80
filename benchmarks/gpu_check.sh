#!/usr/bin/env bash
# The GPU measurements of issue 5 in one script, for an H100 or H200 (typically 4-6 minutes; the
# parts' timeouts cap it at 9.5 minutes):
#   1. step time of adam and balanced (exact, subbatch, next_batch) with hpcm_base at 256x256,
#      batch 8, fp32, and with the speed options (channels_last, bf16 autocast), interleaved in
#      one process so that every ratio compares the same GPU, batch and initial weights;
#   2. torch.compile (inductor) of adam and balanced:exact against eager adam, in a second
#      process (compile time falls in the warm-up rounds);
#   3. a one-process torchrun run of trainer=ddp on CUDA (NCCL initialisation, balanced steps,
#      validation, checkpoints) with the tiny model.
# Usage:  bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT or gpu_check_results)
#         DRY=1 bash benchmarks/gpu_check.sh DIR      (the same parts on the CPU with the tiny
#                                                      model, one round each: checks the script)
# Each part has its own timeout and the script goes on when one fails; OUT_DIR gets the JSON
# results, the logs and summary.txt (the GPU model, the tables and each part's exit status).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_results}}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"

note() { echo "$*" | tee -a "$summary"; }

if [[ "${DRY:-0}" == 1 ]]; then
    base=(--model tiny --device cpu --batch-size 2 --crop 256)
    rounds1=(--warmup 0 --steps 1)
    rounds2=(--warmup 0 --steps 1 --set trainer.compile_backend=eager)
    bf16=""  # bf16 autocast is CUDA only
    device=cpu
else
    base=(--model hpcm_base --device cuda --batch-size 8 --crop 256)
    rounds1=(--warmup 3 --steps 12)
    rounds2=(--warmup 2 --steps 10)
    bf16="+bf16"
    device=cuda
fi

note "== $(date -u +%FT%TZ) gpu_check (DRY=${DRY:-0})"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 |
    tee -a "$summary"
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 |
    tee -a "$summary"

note "== 1. adam vs balanced modes, fp32 and speed options (${base[*]})"
timeout 240 python benchmarks/train_step.py "${base[@]}" "${rounds1[@]}" \
    --variants adam balanced:exact balanced:subbatch balanced:next_batch \
    adam+cl "adam${bf16}" "adam${bf16}+cl" \
    "balanced:exact${bf16}+cl" "balanced:subbatch${bf16}+cl" "balanced:next_batch${bf16}+cl" \
    --json "$out/modes_options.json" >"$out/modes_options.log" 2>&1
status=$?
grep -v -i warn "$out/modes_options.log" | tail -14 | tee -a "$summary"
note "part 1 exit status $status"

note "== 2. torch.compile vs eager"
timeout 270 python benchmarks/train_step.py "${base[@]}" "${rounds2[@]}" \
    --variants adam adam+compile balanced:exact+compile \
    --json "$out/compile.json" >"$out/compile.log" 2>&1
status=$?
grep -v -i warn "$out/compile.log" | tail -6 | tee -a "$summary"
note "part 2 exit status $status"

note "== 3. trainer=ddp through torchrun (1 process), tiny model on $device"
timeout 60 python -m torch.distributed.run --standalone --nproc_per_node=1 train.py \
    trainer=ddp optimizer=balanced logger=none trainer.epochs=1 trainer.progress_bar=false \
    trainer.device="$device" trainer.max_steps_per_epoch=4 data.batch_size=2 \
    data.test_crop_size=256 hydra.run.dir="$out/ddp_run" >"$out/ddp.log" 2>&1
status=$?
grep -v -i warn "$out/ddp.log" | tail -3 | tee -a "$summary"
ls "$out/ddp_run" 2>&1 | tr '\n' ' ' | tee -a "$summary"
echo | tee -a "$summary"
note "part 3 exit status $status"
note "== done $(date -u +%FT%TZ)"
