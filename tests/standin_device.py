"""A non-CPU device stand-in for tests on machines without a GPU.

Inside ``with StandinDevice() as dev:`` a tensor moved to ``dev`` (``x.to(dev)``, ``module.to(dev)``,
``torch.full(..., device=dev)``) keeps its values on the CPU but reports ``dev`` (the ``meta``
device type) as its device, and every operation checks its operands as torch does on a GPU: a
tensor on ``dev`` meeting a CPU tensor with at least one dimension raises torch's own
"Expected all tensors to be on the same device" error (0-dim CPU tensors mix freely, as they do
with CUDA tensors). Values are computed for real, so a whole sampler, rate estimate or training
step runs, and code that forgets a ``.to(device)`` fails on the CPU as it would on a GPU.
Moving back (``.cpu()``, ``.to("cpu")``) gives a plain CPU tensor; ``.numpy()`` of a tensor on
``dev`` fails, as it does for a CUDA tensor.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

DEVICE = torch.device("meta")
_MOVES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


class OnStandin(torch.Tensor):
    """A CPU tensor ``elem`` that reports :data:`DEVICE` as its device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=DEVICE,
            requires_grad=elem.requires_grad,
        )
        out.elem = elem.detach() if elem.requires_grad else elem
        return out

    def __repr__(self):
        return f"OnStandin({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError("A stand-in device tensor was used outside `with StandinDevice():`.")


def _is_standin(device) -> bool:
    return isinstance(device, (torch.device, str)) and torch.device(device).type == DEVICE.type


class _Constructors(TorchFunctionMode):
    """``torch.tensor(data, device=dev)`` and friends build their tensor below the dispatcher (no mode
    sees the copy to the device): build it on the CPU, then move it with a dispatched ``.to``."""

    FUNCTIONS = {torch.tensor, torch.as_tensor, torch.asarray}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FUNCTIONS and _is_standin(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": "cpu"}).to(DEVICE)
        return func(*args, **kwargs)


class StandinDevice(TorchDispatchMode):
    """The stand-in device (see the module docstring); ``with StandinDevice() as dev`` gives the device to use."""

    def __enter__(self):
        self._constructors = _Constructors()
        self._constructors.__enter__()
        super().__enter__()
        return DEVICE

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._constructors.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        devices = set()

        def unwrap(t):
            if isinstance(t, OnStandin):
                devices.add("standin")
                return t.elem
            if isinstance(t, torch.Tensor):
                if t.device.type == DEVICE.type:
                    raise RuntimeError(f"{func}: a real meta tensor (no values) reached the stand-in device")
                if t.dim() > 0:
                    devices.add(str(t.device))
            return t

        plain_args, plain_kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        to_standin = _is_standin(kwargs.get("device"))
        if to_standin:
            plain_kwargs["device"] = torch.device("cpu")
        if len(devices) > 1 and func not in _MOVES:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{DEVICE.type} (stand-in) and cpu! ({func})"
            )
        out = func(*plain_args, **plain_kwargs)
        if func is torch.ops.aten._to_copy.default and "device" in kwargs and not to_standin:
            return out  # moved off the stand-in: a plain tensor
        if func is torch.ops.aten.copy_.default:
            return args[0]
        wrap = to_standin or "standin" in devices
        originals = {id(p): a for a, p in zip(tree_leaves(args), tree_leaves(plain_args)) if isinstance(a, OnStandin)}

        def rewrap(t):
            if isinstance(t, torch.Tensor) and wrap:
                same = originals.get(id(t))
                return same if same is not None else OnStandin(t)  # in-place ops return their (wrapped) input
            return t

        return tree_map(rewrap, out)
