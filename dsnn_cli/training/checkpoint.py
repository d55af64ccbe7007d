"""Checkpoints that carry their model's config, and `load_model(run_dir)`.

A checkpoint is a plain dict of tensors and Python values, loaded with
``torch.load(weights_only=True)`` so that opening one cannot run code. It stores the model
config and the data facts (channels, size, classes, normalisation) used to build the
model, so a run is rebuilt from its own checkpoint, never from today's defaults. It also
carries the SHA-256 of its weights, verified on every load (a flipped bit in a tensor would
otherwise load silently) and recorded by attacks, certificates and the summary, so a result
is only ever paired with the weights that produced it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.rundir import atomic_write_bytes

FORMAT = "dsnn-checkpoint-v1"
FINAL = "final.pt"
LAST = "last.pt"
BEST = "best.pt"


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, model: nn.Module, **state: Any) -> str:
    """Atomically save the model's weights and config plus any training state; returns the
    weights' digest."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "model_config": model.config["model"],
        "data_info": model.config["data_info"],
        "state_dict": weights,
        "weights_sha256": weights_digest(weights),
        **state,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return payload["weights_sha256"]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely; a missing or corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike
        raise DsnnError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); "
            "re-run training or pick another checkpoint"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DsnnError(f"{path} is not a dsnn checkpoint (format {FORMAT} expected)")
    recorded = payload.get("weights_sha256")  # absent only in checkpoints older than the digest
    if recorded is not None and (
        not isinstance(payload.get("state_dict"), dict) or weights_digest(payload["state_dict"]) != recorded
    ):
        raise DsnnError(
            f"checkpoint {path} fails its checksum (its weights changed after it was written); "
            "re-run training or pick another checkpoint"
        )
    return payload


def find_checkpoint(run_dir: Path | str) -> Path:
    """The run's final checkpoint, or its latest epoch if training did not finish."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run={run_dir} is not a directory; give a run directory under outputs/")
    for name in (FINAL, LAST):
        candidate = run_dir / "checkpoints" / name
        if candidate.is_file():
            return candidate
    raise UsageError(f"run={run_dir} has no checkpoint (checkpoints/{FINAL} or checkpoints/{LAST})")


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    from dsnn_cli.models.networks import build_model

    model = build_model(payload["model_config"], payload["data_info"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise DsnnError(f"checkpoint weights do not fit the model they describe ({exc})") from exc
    return model


def load_model(run_dir: Path | str) -> nn.Module:
    """The model of a run's last checkpoint: float32, CPU, eval mode, [0,1] in, logits out."""
    model = model_from_checkpoint(load_checkpoint(find_checkpoint(run_dir)))
    return model.float().cpu().eval()
