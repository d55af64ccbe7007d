"""What a GPU run needs that a CPU run never shows, checked on the CPU: tensors of one device
per call, few host syncs per step (both on the `meta` device under `on_device.OnDevice`),
bf16 autocast for every family, the process group and the GPU of each rank, the data
downloaded once per node, and sweeps and SLURM jobs that get and share GPUs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
from conftest import REPO, SUBPROCESS_ENV, TINY, compose_config
from on_device import OnDevice
from torch import nn

from dsnn_cli.commands.train import TrainSettings, run_train
from dsnn_cli.data.loading import batches, load_data
from dsnn_cli.devices import exact_float32, resolve_device
from dsnn_cli.distributed import World, join
from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.models.layers import SplitStep, Step
from dsnn_cli.models.networks import build_model
from dsnn_cli.rundir import RunDir
from dsnn_cli.training import loop
from dsnn_cli.training.optim import build_optimizer

META = torch.device("meta")


def prepared(overrides: list[str]):
    """Settings, data, task and model of a composed `dsnn train` config, on the CPU."""
    settings = TrainSettings.from_config(compose_config("train", overrides))
    data = load_data(settings.data)
    task = loop.make_task(settings.recipe.loss, data, settings.data["name"])
    return settings, data, task, build_model(settings.model, data.info())


def test_a_gpu_process_group_also_takes_cpu_tensors_and_each_rank_finds_its_gpu(monkeypatch):
    """NCCL alone refuses CPU tensors; cuda:LOCAL_RANK is no device where a task sees one GPU."""
    backends = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: backends.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # SLURM binding one GPU per task
    assert join(World(1, 2, 1), torch.device("cuda")) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # torchrun: the node's GPUs
    assert join(World(3, 4, 3), torch.device("cuda")) == torch.device("cuda", 3)
    assert backends == ["cpu:gloo,cuda:nccl"] * 2
    assert join(World(1, 2, 1), torch.device("cpu")) == torch.device("cpu") and backends[-1] == "gloo"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DsnnError, match="local rank 2.* sees 2 GPUs"):
        join(World(2, 4, 2), torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UsageError, match="trainer.device=cuda:2 but this process sees 2 CUDA"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("replay", [False, True], ids=["clean", "adversarial replay"])
def test_an_epoch_on_a_device_reduces_there_and_waits_for_it_at_most_once_per_step(
    replay, monkeypatch, tmp_path
):
    """`fit` on `meta` as rank 1 of 2 (collectives recorded, not run), with augmentation: no call
    mixes devices, every collective reduces a tensor of the training device, and between two
    optimiser steps the host waits for the device at most once (the loop's periodic read)."""
    reduced = []
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None, **_: reduced.append(tensor.device))
    monkeypatch.setattr(dist, "barrier", lambda **_: None)
    monkeypatch.setattr(loop, "data_parallel", lambda model, device: model)  # DDP needs a real group
    monkeypatch.setattr(loop, "READ_EVERY", 3, raising=False)  # reads inside the epoch's 8 batches
    eps = 0.3 if replay else "null"
    overrides = [*TINY, "model=lipschitz", "data.augment=true", "trainer.limit_batches=8"]
    settings, data, task, model = prepared(
        [*overrides, f"loss.adversarial.eps={eps}", "loss.adversarial.start=0"]
    )
    with OnDevice() as device:
        state = loop.fit(
            model, data, task, settings.trainer, settings.recipe, RunDir(tmp_path), META, world=World(1, 2, 1)
        )
    steps = 8 * (2 if replay else 1)
    assert state["steps"] == steps
    # before the first step: the model's and the data's transfer; after the last: the epoch's end
    between = device.syncs_between_steps()[1:-1]
    assert len(between) == steps - 1
    assert all(len(syncs) <= 1 for syncs in between), between
    assert sum(len(syncs) for syncs in between) == 2  # the reads before batches 3 and 6
    assert reduced and set(reduced) == {META}


# Every image family and the options that change what runs, and the vector families' presets.
BF16_MODELS = {
    "lipschitz": [*TINY],
    "Cayley 3x3 contractions": [*TINY, "model.contractive_kernel=3", "model.contractive_width=1"],
    "dense pair, one Cayley solve": [*TINY, "model.dense_orthogonal=cayley"],
    "spectral contractions": [*TINY, "model.contractive=spectral"],
    "penalty contractions": [*TINY, "model.contractive=penalty"],
    "lipschitz_paper": [*TINY, "model=lipschitz_paper"],
    "paper_cifar10 preset": ["experiment=paper_cifar10", *TINY],
    "lipschitz_flexible": [*TINY, "model=lipschitz_flexible"],
    "nonexpansive": [*TINY, "model=nonexpansive"],
    "naive": [*TINY, "model=naive"],
    "resnet": [*TINY, "model=resnet", "loss=cross_entropy"],
    "volume": [*TINY, "model=volume"],
    **{
        name: [f"experiment={name}", "debug=smoke"]
        for name in ("mass_sir", "volume_abc", "splitting_function")
    },
}


@pytest.mark.parametrize("name", list(BF16_MODELS))
def test_bf16_training_keeps_every_familys_activations_in_bf16(name):
    """One bf16 optimiser step: every dynamic layer's output and the logits in bfloat16 (no
    float32 bias lifts them back), a finite float32 loss, float32 weights still finite."""
    overrides = BF16_MODELS[name]
    settings, data, task, model = prepared(overrides)
    outputs = []
    for module in model.modules():
        if isinstance(module, (Step, SplitStep)):
            module.register_forward_hook(lambda module, inputs, output: outputs.append(output.dtype))
    optimizer = build_optimizer(settings.recipe.optim, model.parameters())
    x, y = next(batches(data.train, 8))
    loss, logits = loop.optimise(model, model.train(), task, optimizer, x, y, "bf16", World(), 8)
    assert outputs and set(outputs) == {torch.bfloat16} and logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in model.parameters())


def test_the_papers_preset_trains_in_bf16_and_certifies_in_float64(tmp_path):
    """The command of issue 22, at test size: Cayley convolutions under bf16 autocast."""
    overrides = ["experiment=paper_cifar10", *TINY, "trainer.precision=bf16", "trainer.max_epochs=1"]
    summary = run_train(compose_config("train", overrides), tmp_path / "run")
    assert summary["status"] == "done" and summary["certified"] and summary["lipschitz_bound"] <= 1 + 1e-5


def test_the_softmax_check_of_the_attacks_runs_on_the_device():
    """All logits of a batch in [0, 1] summing to 1 (plausible for a small-logit Lipschitz model):
    the check must warn, not compare a device tensor with a host one."""
    from dsnn_cli.robustness.attacks import sanity_check

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Softmax(dim=1)).to(META).eval()
    images = torch.rand(4, 3, 2, 2).to(META)
    with OnDevice(answer=True), pytest.warns(UserWarning, match="probabilities"):
        sanity_check(model, images)


def test_an_attack_runs_on_the_device_without_mixing_devices(trained_lipschitz_run):
    """The PGD cascade (random start, steps, projection, re-evaluation) on `meta`."""
    import dsnn_cli
    from dsnn_cli.robustness.attacks import ATTACKS

    model = dsnn_cli.load_model(trained_lipschitz_run).to(META)
    images, labels = torch.rand(6, 3, 16, 16).to(META), (torch.arange(6) % 10).to(META)
    with OnDevice(answer=False), pytest.warns(UserWarning):  # stand-in outputs "differ"
        result = ATTACKS["pgd"](model, images, labels, 0.3, steps=3, batch_size=4)
    assert result.robust.device == META and result.adversarial.shape == images.shape


def test_pgd_on_a_device_reads_it_once_per_ten_steps(trained_lipschitz_run):
    """Which points are broken (the batch shrinks) is read every PGD_READ_EVERY steps on a GPU,
    not at every step: 30 steps, three reads, one for the count of zero gradients."""
    import dsnn_cli
    from dsnn_cli.robustness.attacks import PGD_READ_EVERY, ce_loss, pgd_run

    model = dsnn_cli.load_model(trained_lipschitz_run).to(META)
    images, labels = torch.rand(6, 3, 16, 16).to(META), (torch.arange(6) % 10).to(META)
    generator = torch.Generator().manual_seed(0)
    with OnDevice(answer=False) as device:
        found, best, _ = pgd_run(model, images, labels, 0.3, ce_loss, 30, lambda t: 0.05, generator, True)
    assert found.device == best.device == META and PGD_READ_EVERY == 10
    assert len(device.syncs) == 3 + 1, device.syncs


def test_certification_runs_on_the_device(trained_lipschitz_run):
    """The float32 model and its float64 copy over the points on `meta` (the copy's proof on the
    host): no call mixes devices."""
    import dsnn_cli
    from dsnn_cli.robustness.certificates import certify

    model = dsnn_cli.load_model(trained_lipschitz_run).to(META)
    images, labels = torch.rand(6, 3, 16, 16).to(META), (torch.arange(6) % 10).to(META)
    with OnDevice(answer=False):
        result = certify(model, images, labels, device=META, batch_size=4)
    assert result.radii.shape == (6,) and result.logits.shape == (6, 10)


def test_training_arithmetic_on_gpus_and_exact_float32_for_certificates():
    """TF32 and cuDNN autotuning while training on CUDA, neither inside `exact_float32`, and
    deterministic kernels when asked; the settings come back afterwards."""
    from dsnn_cli.devices import training_arithmetic

    cuda, backends = torch.device("cuda"), torch.backends
    before = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark)
    with training_arithmetic(cuda, deterministic=False):
        assert backends.cuda.matmul.allow_tf32 and backends.cudnn.allow_tf32 and backends.cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
        with exact_float32():
            assert not backends.cuda.matmul.allow_tf32 and not backends.cudnn.allow_tf32
    with training_arithmetic(cuda, deterministic=True):
        assert not backends.cudnn.benchmark and backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark) == before
    assert not torch.are_deterministic_algorithms_enabled()


def test_trainer_deterministic_trains_with_deterministic_kernels(tmp_path, monkeypatch):
    seen = []
    step = loop.optimise

    def recording(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "optimise", recording)
    overrides = [*TINY, "model=lipschitz", "data.augment=true", "trainer.deterministic=true"]
    summary = run_train(compose_config("train", overrides), tmp_path / "run")
    assert summary["status"] == "done" and seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()


FAKE_CIFAR = '''
import json, os, sys, time
import numpy as np
import torchvision

class FakeCIFAR10:
    """Records who opens and who downloads; a download takes a second."""
    classes = [f"class{c}" for c in range(10)]

    def __init__(self, root, train, download):
        log = os.path.join(root, "events.jsonl")
        def note(event):
            with open(log, "a") as handle:
                row = {"rank": os.environ["RANK"], "event": event, "t": time.time()}
                handle.write(json.dumps(row) + "\\n")
        marker = os.path.join(root, "downloaded")
        note("download start" if download else "open")
        if download:
            time.sleep(1.0)
            open(marker, "w").close()
            note("download end")
        elif not os.path.exists(marker):
            raise RuntimeError("Dataset not found")
        n = 64 if train else 32
        self.data = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]

torchvision.datasets.CIFAR10 = FakeCIFAR10
from dsnn_cli.cli import main
sys.exit(main())
'''


def test_rank_0_downloads_the_data_before_the_other_ranks_read_it(tmp_path):
    """Two ranks on a fresh node: one download (rank 0's), and rank 1 opens the folder after it."""
    script = tmp_path / "train_with_fake_cifar.py"
    script.write_text(textwrap.dedent(FAKE_CIFAR))
    root = tmp_path / "data"
    root.mkdir()
    args = ["train", "data=cifar10", f"data.root={root}", "data.val_size=0", "debug=smoke"]
    args += ["model.widths=[4,8,8]", "loss.adversarial.eps=null", f"hydra.run.dir={tmp_path / 'run'}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(script), *args],
        cwd=REPO,
        env={**os.environ, **SUBPROCESS_ENV, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    downloads = [e for e in events if e["event"] == "download start"]
    assert [e["rank"] for e in downloads] == ["0"]
    finished = next(e["t"] for e in events if e["event"] == "download end")
    assert all(e["t"] >= finished for e in events if e["rank"] == "1")


def test_the_slurm_presets_request_gpus(tmp_path, monkeypatch):
    """The job scripts SLURM would receive for hydra/launcher=slurm (one GPU a job) and slurm_ddp."""
    import submitit
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    for preset, gpus in (("slurm", 1), ("slurm_ddp", 4)):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="dsnn_cli.conf", version_base="1.3"):
            cfg = compose("sweep", [f"hydra/launcher={preset}"], return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
        executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / preset)
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip}
        )
        script = executor._executor._make_submission_file_text("python -m dsnn_cli sweep", "uid")
        assert f"#SBATCH --gpus-per-node={gpus}" in script, script
        assert f"#SBATCH --ntasks-per-node={gpus}" in script, script


def test_a_slurm_job_without_a_gpu_says_so_before_training_on_the_cpu(monkeypatch, caplog):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert "SLURM job 4242 sees no GPU" in caplog.text and "hydra/launcher=slurm" in caplog.text


def test_a_sweep_on_several_gpus_spreads_its_jobs_over_them(tmp_path, monkeypatch):
    """Parallel jobs (joblib) on a 2-GPU machine: job k trains and is attacked on cuda:(k mod 2)."""
    import dsnn_cli.commands.attack as attack
    import dsnn_cli.commands.train as train
    from dsnn_cli.commands.sweep import run_sweep_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    trained, attacked = [], []
    monkeypatch.setattr(train, "run_train", lambda cfg, output_dir: trained.append(cfg.trainer.device))
    monkeypatch.setattr(attack, "run_attack", lambda cfg: attacked.append(cfg["device"]))
    cfg = compose_config("sweep", [*TINY, "trainer.device=auto"])
    for job in range(4):
        run_sweep_job(cfg, tmp_path / str(job), job)
    assert trained == attacked == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert cfg.trainer.device == "auto"  # the composed config itself is left alone
