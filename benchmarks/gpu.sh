#!/usr/bin/env bash
# GPU figures in about 15 minutes on one GPU: images/s of every family at the paper's size
# (float32 with TF32, and bf16), one epoch of the paper's recipe in float32 and in bf16 (and
# the projected 100), a compiled run (torch.compile: compile time and images/s), the
# AutoAttack cascade on 1,000 test images, dsnn certify on the test set, peak memory, and a
# 2-GPU torchrun smoke run when two GPUs are visible. Prints the device first and, at the
# end, every figure it produced and where it comes from.
#   bash benchmarks/gpu.sh                  # CIFAR-10 by torchvision's download
#   bash benchmarks/gpu.sh ROOT             # an ImageFolder copy (ROOT/train, ROOT/test)
#   bash benchmarks/gpu.sh synthetic        # no data files: speed figures only, accuracies meaningless
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
DSNN=${DSNN:-.venv/bin/dsnn}
OUT=outputs/bench/gpu-$(date +%Y-%m-%d_%H-%M-%S)
DATA=()
if [ "${1:-}" = synthetic ]; then
  DATA=(data=synthetic data.n_train=50000 data.n_test=10000 data.val_size=5000 data.augment=true)
elif [ $# -ge 1 ]; then
  DATA=(data=imagefolder "data.root=$1")
fi
"$PY" -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu.sh: error: no CUDA device: this benchmark is for GPUs (make bench is the CPU one)'); print('device:', torch.cuda.get_device_name(), 'x', torch.cuda.device_count(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$OUT"

echo "== images/s of every family (training steps, float32 with TF32, then bf16)"
"$PY" benchmarks/bench_training.py --device cuda --widths 32 64 128 --batch 128 --repeats 20 | tee "$OUT/families-32.txt"
"$PY" benchmarks/bench_training.py --device cuda --widths 32 64 128 --batch 128 --repeats 20 --precision bf16 | tee "$OUT/families-bf16.txt"

echo "== one epoch of experiment=paper_cifar10, float32 (TF32) and bf16"
"$DSNN" train experiment=paper_cifar10 trainer.max_epochs=1 trainer.device=cuda "${DATA[@]}" hydra.run.dir="$OUT/paper-32"
"$DSNN" train experiment=paper_cifar10 trainer.max_epochs=1 trainer.device=cuda trainer.precision=bf16 "${DATA[@]}" hydra.run.dir="$OUT/paper-bf16"

echo "== torch.compile: the same epoch compiled (compile time included in the epoch's seconds)"
"$DSNN" train experiment=paper_cifar10 trainer.max_epochs=1 trainer.device=cuda trainer.compile=true "${DATA[@]}" hydra.run.dir="$OUT/paper-compiled"

echo "== AutoAttack (1,000 points) and dsnn certify on the float32 epoch"
"$DSNN" attack run="$OUT/paper-32" eps=0.3 attack=autoattack attack.n_examples=1000 device=cuda
"$DSNN" certify run="$OUT/paper-32" device=cuda

if [ "$GPUS" -ge 2 ]; then
  echo "== 2-GPU torchrun smoke run (DDP, NCCL + gloo), 100 batches"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m dsnn_cli train experiment=paper_cifar10 \
    trainer.max_epochs=1 trainer.limit_batches=100 trainer.batch_size=256 trainer.device=cuda "${DATA[@]}" \
    hydra.run.dir="$OUT/torchrun-2"
fi

"$PY" - "$OUT" "$GPUS" <<'PY'
import json, sys
from pathlib import Path

out, gpus = Path(sys.argv[1]), int(sys.argv[2])
read = lambda path: json.loads(path.read_text()) if path.is_file() else None  # noqa: E731
print("\nfigures produced (docs/guide.md, Beyond one CPU, takes them):")
for precision in ("32", "bf16"):
    print(f"  images/s per family, {precision}: {out / f'families-{precision}.txt'}")
for name, what in (("paper-32", "float32 + TF32"), ("paper-bf16", "bf16 autocast"), ("paper-compiled", "torch.compile")):
    s = read(out / name / "summary.json")
    print(f"  paper_cifar10 one epoch, {what}: {s['train_seconds']:.1f} s training, {s['images_per_second']:.0f} img/s "
          f"(100 epochs ~ {100 * s['train_seconds'] / 60:.1f} min), test acc {s['test_acc']:.4f}, "
          f"peak memory {s['peak_memory_mb']:.0f} MB  [{out / name / 'summary.json'}]")
attack, certify = read(out / "paper-32" / "attack-autoattack.json"), read(out / "paper-32" / "certify.json")
print(f"  autoattack on {attack['n']} images at eps 0.3: {attack['seconds']:.1f} s, robust {attack['results'][0]['robust']:.4f}, "
      f"peak memory {attack['peak_memory_mb']:.0f} MB")
print(f"  dsnn certify on {certify['n']} images: {certify['seconds']:.1f} s")
ddp = read(out / "torchrun-2" / "summary.json")
if ddp:
    print(f"  torchrun, 2 GPUs, 100 batches of 256: {ddp['images_per_second']:.0f} img/s, status {ddp['status']}, ranks {ddp['ranks']}")
else:
    print(f"  torchrun, 2 GPUs: not run ({gpus} GPU visible)")
PY
