#!/usr/bin/env bash
# What one lent GPU session must answer (issues 5 and 14), in one script of at most 10 minutes
# (each part has its own timeout; on a GPU the caps add up to 9.8 minutes, 5-7 typically used):
#   1. the data loader: images/s per worker of 256x256 training crops (old pipeline, new, and a
#      prepared folder) from ../shared/data, and what 8 workers would deliver;
#   2. step times of hpcm_base at 256x256, batch 8 and batch 32, in IEEE fp32 (TF32 off) and bf16
#      autocast, NCHW and channels_last, adam and balanced, interleaved per batch size in one
#      process; each row also gives the images/s the GPU consumes, to set beside part 1;
#   3. torch.compile (inductor) of adam at batch 32, bf16 + channels_last: compile time and step
#      time against eager;
#   4. DDP with NCCL at world size 1: torchrun --nproc_per_node=1 with trainer=ddp (the model is
#      really wrapped, the collectives run), tiny model, balanced steps, validation, checkpoints;
#   5. coding on CUDA: cudnn.benchmark, TF32 ("medium") and autocast of a caller do not change
#      the bitstreams, and they decode.
# Usage:  bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT or gpu_check_results)
#         DATA_FOLDERS="DIR ..." bash benchmarks/gpu_check.sh   (part 1 reads these photo folders
#                                                      instead of ../shared/data, which a lent
#                                                      machine may not have)
#         DRY=1 bash benchmarks/gpu_check.sh DIR      (the same parts on the CPU with the tiny
#                                                      model, batches 1 and 2, one round each,
#                                                      gloo, no bf16: checks the script)
# The script goes on when a part fails; OUT_DIR gets the JSON results, the logs and summary.txt
# (the GPU model, the tables and each part's exit status).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_results}}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"

note() { echo "$*" | tee -a "$summary"; }
part_status() { note "part $1 exit status $2"; }

if [[ "${DRY:-0}" == 1 ]]; then
    device=cpu
    model=(--model tiny --device cpu --crop 256)
    batches=(1 2)
    rounds=(--warmup 0 --steps 1)
    compile_set=(--set trainer.compile_backend=eager)
    bf16=""  # bf16 autocast is CUDA only
    variants=(adam adam+cl balanced:exact balanced:exact+cl balanced:next_batch+cl)
    data_args=(--samples 4 --rounds 1)
    data_timeout=180  # a loaded CPU
    ddp_timeout=240
    coding=(--size 256)
    coding_timeout=240
else
    device=cuda
    model=(--model hpcm_base --device cuda --crop 256)
    batches=(8 32)
    rounds=(--warmup 1 --steps 6)
    compile_set=()
    bf16="+bf16"
    variants=(adam adam+cl balanced:exact adam+bf16 adam+bf16+cl balanced:exact+bf16+cl
        balanced:next_batch+bf16+cl)
    data_args=(--samples 40 --rounds 3)
    data_timeout=50
    ddp_timeout=60
    coding=(--size 512)
    coding_timeout=60
fi

note "== $(date -u +%FT%TZ) gpu_check (DRY=${DRY:-0})"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 |
    tee -a "$summary"
python -c 'import torch, os; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "cpus", os.cpu_count())' 2>&1 | tee -a "$summary"

note "== 1. data loader: images/s per worker (old, new, prepared) and with 8 workers"
folders=()
if [[ -n "${DATA_FOLDERS:-}" ]]; then
    read -r -a folders <<<"$DATA_FOLDERS"
    folders=(--folders "${folders[@]}")
fi
timeout "$data_timeout" python benchmarks/data.py "${data_args[@]}" "${folders[@]}" --workers 8 \
    --json "$out/data.json" \
    >"$out/data.log" 2>&1
status=$?
grep -v -i warn "$out/data.log" | tail -8 | tee -a "$summary"
part_status 1 $status

part=2
for batch in "${batches[@]}"; do
    note "== $part. step times at batch $batch: fp32 (TF32 off) and bf16, NCHW and channels_last"
    timeout 120 python benchmarks/train_step.py "${model[@]}" --batch-size "$batch" \
        "${rounds[@]}" --tf32 off --variants "${variants[@]}" \
        --json "$out/steps_b$batch.json" >"$out/steps_b$batch.log" 2>&1
    status=$?
    grep -v -i warn "$out/steps_b$batch.log" | tail -9 | tee -a "$summary"
    part_status "$part.$batch" $status
done

batch="${batches[-1]}"
note "== 3. torch.compile at batch $batch${bf16:+, bf16 + channels_last}"
timeout 180 python benchmarks/train_step.py "${model[@]}" --batch-size "$batch" "${rounds[@]}" \
    "${compile_set[@]}" --variants "adam${bf16}+cl" "adam${bf16}+cl+compile" --json "$out/compile.json" >"$out/compile.log" 2>&1
status=$?
grep -v -i warn "$out/compile.log" | tail -5 | tee -a "$summary"
part_status 3 $status

note "== 4. trainer=ddp through torchrun, one process, tiny model on $device"
timeout "$ddp_timeout" python -m torch.distributed.run --standalone --nproc_per_node=1 train.py \
    trainer=ddp optimizer=balanced logger=none trainer.epochs=1 trainer.progress_bar=false \
    trainer.device="$device" trainer.max_steps_per_epoch=4 data.batch_size=2 \
    data.test_crop_size=256 hydra.run.dir="$out/ddp_run" >"$out/ddp.log" 2>&1
status=$?
grep -E "DDP: |error" "$out/ddp.log" | tee -a "$summary"
grep -v -i warn "$out/ddp.log" | tail -2 | tee -a "$summary"
ls "$out/ddp_run" 2>&1 | tr '\n' ' ' | tee -a "$summary"
echo | tee -a "$summary"
part_status 4 $status

note "== 5. coding on $device under a caller's cudnn.benchmark, TF32 and autocast"
timeout "$coding_timeout" python benchmarks/coding_check.py --device "$device" "${coding[@]}" \
    >"$out/coding.log" 2>&1
status=$?
tail -2 "$out/coding.log" | tee -a "$summary"
part_status 5 $status

note "== loader vs GPU (images/s): what 8 workers deliver, what each step row consumes"
python - "$out" <<'EOF' 2>&1 | tee -a "$summary"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for row in json.loads((out / "data.json").read_text()) if (out / "data.json").exists() else []:
    print(f"loader {row['folder']:<14} {row['variant']:<9} {row['loader_images_per_s']:>8.0f}")
for path in sorted(out.glob("steps_b*.json")) + [out / "compile.json"]:
    if path.exists():
        for row in json.loads(path.read_text())["rows"]:
            print(f"gpu    {path.stem:<14} {row['variant']:<30} {row['images_per_s']:>8.1f}")
EOF
note "== done $(date -u +%FT%TZ)"
