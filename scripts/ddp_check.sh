#!/usr/bin/env bash
# One GPU against N under Lightning's ddp: the feature pass (speed and values), compare.py and the DLP.
#   bash scripts/ddp_check.sh CORPUS OUT [N]          (N GPUs, default 2)
#   DEVICE=cpu bash scripts/ddp_check.sh ...          (a smoke test of the code paths: N CPU processes, gloo)
# 1. bench/ddp.py: hidden states of both checkpoints of each 1B architecture (random bf16 weights), 1 vs N GPUs;
# 2. a micro pair (seconds to build; its accuracy does not matter here) for the next two steps;
# 3. compare.py with the feature methods on 1 and N GPUs: largest score difference;
# 4. the DLP: fit on 1 GPU (batch 32) and on N (batch 32/N per rank: the same global batch), test each, and
#    test the 1-GPU checkpoint on N GPUs too (same checkpoint, so the same metrics are expected).
set -euo pipefail
corpus=$(realpath "$1"); out=$(realpath -m "$2"); n=${3:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
device=${DEVICE:-cuda}
if [ "$device" = cuda ]; then accelerator=gpu shrink=(); else accelerator=cpu shrink=(--shrink); fi
mkdir -p "$out"
export PROBES_CACHE=$out/cache PYTHONUNBUFFERED=1
cd "$root"
for arch in llama3.2-1b olmo2-1b; do
  python bench/ddp.py --arch $arch --corpus "$corpus" --devices "$n" --batch-size 512 --out "$out" \
    --accelerator "$device" "${shrink[@]}"
done
python -m probes.pairs build --preset micro --corpus "$corpus" --out "$out/pair" --device "$device"
methods='[{label: repsim, method: repsim}, {label: delta_h, method: delta_h}, {label: act_grad, method: act_grad}]'
for d in 1 "$n"; do
  python compare.py --config configs/compare.yaml --data.corpus_path "$corpus" --model.old "$out/pair/old" \
    --model.new "$out/pair/new" --model.device "$device" --model.devices "$d" --model.feature_cache false \
    --methods "$methods" --out "$out/compare-$d"
done
python - "$out" "$n" <<'EOF'
import sys
from safetensors.torch import load_file
out, n = sys.argv[1:]
one, many = load_file(f"{out}/compare-1/scores.safetensors"), load_file(f"{out}/compare-{n}/scores.safetensors")
for label in one:
    diff = (one[label].float() - many[label].float()).abs().max().item()
    print(f"compare.py {label}: largest |score(1 GPU) - score({n} GPUs)| = {diff:.3g}")
EOF
dlp() {  # dlp NAME DEVICES BATCH VERB [ARGS...]: train_probe.py in its own folder (its logs and checkpoints)
  local name=$1 devices=$2 batch=$3 verb=$4; shift 4
  mkdir -p "$out/$name" && (cd "$out/$name" && python "$root/train_probe.py" "$verb" \
    --config "$root/configs/dlp.yaml" --model.model "$out/pair/new" --data.corpus_path "$corpus" \
    --data.batch_size "$batch" --trainer.accelerator $accelerator --trainer.devices "$devices" --trainer.strategy ddp --trainer.max_epochs 1 "$@")
}
dlp dlp-1 1 32 fit
dlp dlp-1 1 32 test --ckpt_path best
dlp dlp-1 "$n" 32 test --ckpt_path best
dlp dlp-$n "$n" $((32 / n)) fit
dlp dlp-$n "$n" $((32 / n)) test --ckpt_path best
python - "$out" "$n" <<'EOF'
import json, sys
from pathlib import Path
out, n = Path(sys.argv[1]), sys.argv[2]
def runs(name):
    return [json.loads(p.read_text()) for p in sorted((out / name).glob("lightning_logs/dlp/version_*/test_metrics.json"))]
fit1, fitn = runs("dlp-1"), runs(f"dlp-{n}")
key = "test/macro/map"
print(f"DLP fit on 1 GPU: test {key} on 1 GPU {fit1[0][key]:.6f}, same checkpoint on {n} GPUs {fit1[1][key]:.6f}")
same = [k for k in fit1[0] if k.startswith("test/") and abs(fit1[0][k] - fit1[1][k]) > 1e-6]
print(f"  metrics differing by more than 1e-6 between 1 and {n} GPUs: {same or 'none'}")
print(f"DLP fit on {n} GPUs (same global batch): test {key} {fitn[0][key]:.6f}")
EOF
