"""Where this process stands in a launch of several (``accelerate launch``), and gathering their rows.

With one process everything here is trivial (rank 0 of 1). With several, every process takes its share of
the rows of a sample set and :func:`gather_rows` concatenates them, in rank order, on the main process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ProcessState", "gather_rows", "process_device", "process_state"]


@dataclass
class ProcessState:
    """This process's place among those of a launch: ``rank`` of ``world``; ``barrier`` waits for all."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    barrier: Callable[[], None] = lambda: None


def process_state() -> ProcessState:
    """The launch this process belongs to (accelerate's ``PartialState`` when started with several processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessState()
    from accelerate import PartialState

    st = PartialState(cpu=not torch.cuda.is_available())
    return ProcessState(st.process_index, st.num_processes, st.local_process_index, st.wait_for_everyone)


def process_device(device: str, state: ProcessState) -> str:
    """``device`` for this process: with several processes on GPUs, each takes ``cuda:<local rank>``."""
    from crs.args import resolve_device

    device = resolve_device(device)
    if state.world > 1 and device.startswith("cuda"):
        return f"cuda:{state.local_rank}"
    return device


def gather_rows(x: torch.Tensor, state: ProcessState, stem: Path) -> torch.Tensor | None:
    """Concatenate every process's rows in rank order on the main process (others get None).

    The shares pass through files ``<stem>.<rank>`` beside the final file (removed afterwards).
    """
    if state.world == 1:
        return x
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    torch.save(x.contiguous(), f"{stem}.{state.rank}")
    state.barrier()
    out = None
    if state.rank == 0:
        parts = [f"{stem}.{r}" for r in range(state.world)]
        out = torch.cat([torch.load(p, weights_only=True) for p in parts])
        for p in parts:
            os.remove(p)
    state.barrier()
    return out
