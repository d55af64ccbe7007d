"""A GPU stand-in for tests on a CPU: code runs with its model and data on the `meta` device
under `OnDevice`, a TorchFunctionMode that

* fails on any call that mixes tensors of two devices (a CPU scalar excepted, as torch allows),
  the bug a GPU run would hit at once and a CPU run never shows;
* counts the calls that make a CUDA host wait for the device (reading a value, copying to the
  host or from pageable memory, data-dependent shapes, a linear solve's error check);
* answers what a meta tensor cannot (its values) with stand-ins, so code that reads them goes on:
  `answer` for truth values and comparisons, 0 for numbers and lists, ones for copies to the host.

`steps` records the optimiser steps among the syncs, so a test can count the syncs between two.
"""

from __future__ import annotations

import importlib

import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten

# Reads of a device tensor's values: the host waits for the device.
READS = {
    "torch.Tensor.__bool__",
    "torch.Tensor.item",
    "torch.Tensor.__int__",
    "torch.Tensor.__float__",
    "torch.Tensor.__index__",
    "torch.Tensor.tolist",
    "torch.Tensor.numpy",
    "torch.equal",
    "torch.Tensor.equal",
    "torch.allclose",
    "torch.Tensor.allclose",
}
# Results whose shape depends on the values.
DATA_DEPENDENT = {
    "torch.nonzero",
    "torch.Tensor.nonzero",
    "torch.masked_select",
    "torch.Tensor.masked_select",
}
# Solves that check their result on the host (the _ex variants with check_errors=False do not).
CHECKED = {"torch.linalg.solve", "torch.linalg.inv", "torch.linalg.cholesky", "torch.inverse"}
# Calls that move data between devices on purpose.
TRANSFERS = {"torch.Tensor.to", "torch.Tensor.cpu", "torch.Tensor.cuda", "torch.Tensor.copy_"}
INDEXING = {"torch.Tensor.__getitem__", "torch.Tensor.__setitem__"}
# Calls that compare or relate tensors without computing with them.
NOT_ARITHMETIC = {"_has_compatible_shallow_copy_type"}


def tensors_in(args, kwargs) -> list[torch.Tensor]:
    leaves, _ = tree_flatten((args, kwargs or {}))
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


class OnDevice(TorchFunctionMode):
    """See the module docstring; `answer` is what a stand-in truth value or comparison gives."""

    def __init__(self, answer: bool = True) -> None:
        super().__init__()
        self.answer = answer
        self.events: list[str] = []  # sync names, and "step" after every optimiser step
        self._hook = None

    def __enter__(self):
        optimizers = importlib.import_module("torch.optim.optimizer")  # shadowed by a function
        self._hook = optimizers.register_optimizer_step_post_hook(lambda *_: self.events.append("step"))
        return super().__enter__()

    def __exit__(self, *exc):
        self._hook.remove()
        return super().__exit__(*exc)

    @property
    def syncs(self) -> list[str]:
        return [event for event in self.events if event != "step"]

    def syncs_between_steps(self) -> list[list[str]]:
        """The syncs before the first step, between each two, and after the last."""
        intervals: list[list[str]] = [[]]
        for event in self.events:
            if event == "step":
                intervals.append([])
            else:
                intervals[-1].append(event)
        return intervals

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = resolve_name(func) or getattr(func, "__name__", str(func))
        tensors = tensors_in(args, kwargs)
        on_device = [t for t in tensors if t.device.type != "cpu"]
        if name not in TRANSFERS and name not in NOT_ARITHMETIC and not name.endswith("__get__"):
            self.check_devices(name, tensors)
        if name in TRANSFERS:
            return self.transfer(name, func, args, kwargs)
        target = torch.device(kwargs.get("device") or "cpu")
        if name in ("torch.tensor", "torch.as_tensor") and target.type != "cpu":
            self.events.append(f"{name} from pageable host memory")
        if not on_device:
            return func(*args, **kwargs)
        if name in READS:
            self.events.append(name)
            return self.stand_in(name, args[0])
        if name in DATA_DEPENDENT:
            self.events.append(name)
            source = args[0]
            return torch.ones(source.shape, dtype=torch.bool).nonzero().to(source.device)
        if name in INDEXING and any(t.dtype == torch.bool for t in tensors_in(args[1], None)):
            self.events.append(f"{name} with a boolean mask")  # a data-dependent shape
            return self.masked(name, args)
        if name in CHECKED:
            self.events.append(name)
        return func(*args, **kwargs)

    def check_devices(self, name: str, tensors: list[torch.Tensor]) -> None:
        devices = {t.device for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if name in INDEXING and tensors and tensors[0].device.type != "cpu":
            devices = {tensors[0].device}  # a host index into a device tensor is allowed (and copied)
        if len(devices) > 1:
            raise AssertionError(f"{name} mixes devices {sorted(map(str, devices))}")

    def transfer(self, name: str, func, args, kwargs):
        source = args[0]
        if name == "torch.Tensor.copy_":
            other = args[1]
            if other.device.type != "cpu" and source.device.type == "cpu":
                self.events.append("copy_ to the host")
                return source
            return func(*args, **kwargs)
        if name == "torch.Tensor.cpu":
            target, dtype, non_blocking = torch.device("cpu"), None, False
        elif name == "torch.Tensor.cuda":
            raise AssertionError("Tensor.cuda() names a device; use .to(device)")
        else:
            target, dtype, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        if target is None or target == source.device:
            return func(*args, **kwargs)
        if source.device.type != "cpu" and target.type == "cpu":
            self.events.append(f"{name} to the host")
            return torch.ones(source.shape, dtype=dtype or source.dtype)  # ones: no division by zero
        if source.device.type == "cpu" and not non_blocking:
            self.events.append(f"{name} blocking copy to the device")
        return func(*args, **kwargs)

    def masked(self, name: str, args):
        """t[mask] (and t[mask] = v) as if every entry of the mask were true."""
        tensor, index = args[0], args[1]
        if not isinstance(index, torch.Tensor):
            raise AssertionError(f"{name}: only a single boolean mask has a stand-in")
        selected = tensor.reshape(-1, *tensor.shape[index.dim() :])
        if name.endswith("__getitem__"):
            return selected.clone()
        selected.copy_(torch.as_tensor(args[2]).to(tensor.device).expand_as(selected))
        return None

    def stand_in(self, name: str, tensor: torch.Tensor):
        if name.endswith(("__bool__", "equal", "allclose")):
            return self.answer
        if name.endswith("tolist"):
            return torch.zeros(tensor.shape, dtype=tensor.dtype).tolist()
        if name.endswith("numpy"):
            return torch.zeros(tensor.shape, dtype=tensor.dtype).numpy()
        if name.endswith(("__int__", "__index__")) or not tensor.is_floating_point():
            return 0
        return 0.0
