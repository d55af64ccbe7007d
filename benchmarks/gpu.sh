#!/usr/bin/env bash
# GPU figures in under 10 minutes: images/s of every family at the paper's size, one epoch of
# the paper's recipe (and the projected 100), the AutoAttack cascade on 1,000 test images,
# dsnn certify on the test set, and peak memory. Prints the device first.
#   bash benchmarks/gpu.sh [CIFAR10_IMAGEFOLDER_ROOT]   (default: the torchvision download)
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
DSNN=${DSNN:-.venv/bin/dsnn}
OUT=outputs/bench/gpu-$(date +%Y-%m-%d_%H-%M-%S)
DATA=()
if [ $# -ge 1 ]; then DATA=(data=imagefolder "data.root=$1"); fi
"$PY" -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu.sh: error: no CUDA device: this benchmark is for GPUs (make bench is the CPU one)'); print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
"$PY" benchmarks/bench_training.py --device cuda --widths 32 64 128 --batch 128 --repeats 20
"$DSNN" train experiment=paper_cifar10 trainer.max_epochs=1 trainer.device=cuda "${DATA[@]}" hydra.run.dir="$OUT/paper-epoch"
"$DSNN" attack run="$OUT/paper-epoch" eps=0.3 attack=autoattack attack.n_examples=1000 device=cuda
"$DSNN" certify run="$OUT/paper-epoch" device=cuda
"$PY" - "$OUT/paper-epoch" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
attack = json.loads((run / "attack-autoattack.json").read_text())
certify = json.loads((run / "certify.json").read_text())
print(f"paper recipe: one epoch {summary['train_seconds']:.1f} s training -> 100 epochs ~ "
      f"{100 * summary['train_seconds'] / 60:.1f} min; {summary['images_per_second']:.0f} img/s; "
      f"peak memory {summary['peak_memory_mb']:.0f} MB")
print(f"autoattack on {attack['n']} images at eps 0.3: {attack['seconds']:.1f} s, "
      f"peak memory {attack['peak_memory_mb']:.0f} MB")
print(f"dsnn certify on {certify['n']} images: {certify['seconds']:.1f} s")
PY
