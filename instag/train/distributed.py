"""Data-parallel pre-training across processes with ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).

Launched by ``torchrun --nproc_per_node N -m instag.cli pretrain ...``; without torchrun (or with N = 1)
nothing here talks to another process and training is exactly the one-process run.

- Identities are sharded: process ``r`` of ``N`` trains identities ``r, r+N, r+2N, ...`` (their clouds,
  personalized fields and optimisers stay local). Every process builds every identity from the same seed,
  so each identity starts as it would in one process, and keeps the others' heads for the contrast loss.
- Iterations keep counting frames, as in one process: a *round* trains one frame per process, process
  ``r`` taking iteration ``b+1+r`` of the round after iteration ``b``, so every schedule (warm-up,
  curriculum, LR) reads the same iteration numbers for any N. Each identity gets about as many steps as in
  one process; the universal fields take one optimiser step per round on the gradient averaged over the
  round's frames (all-reduce), their LR schedule and EMA advancing by the round's frame count.
- With the contrast loss, the stage's personalized fields of all identities are all-gathered each round.
- Checkpoints: process 0 gathers every identity's state and writes the files one process writes
  (identities keyed by their index in the sorted identity list), so ``--resume`` works for any N.
- Decisions taken on a clock (periodic saves, ``--stop_after``) and non-finite losses are agreed across
  processes, so all save, stop or fail at the same round.

NCCL's NVLink multicast is left off (``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` unless
set otherwise): on hosts whose GPUs are shared, a program using it can put them out of service.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from instag.errors import InstagError

IDENTITY_KEY = re.compile(r"^id\d+\.")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size`` 1: alone, no process group)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"  # where the collectives' tensors live (cuda:<local rank> under NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> list[int]:
        """The indices of the ``count`` identities this process trains."""
        return list(range(self.rank, count, self.size))

    def owns(self, index: int) -> bool:
        return index % self.size == self.rank

    # ------------------------------------------------------------------ collectives (no-ops alone)
    def average_gradients(self, params: list[Tensor], had_grad: bool) -> int:
        """Average the gradients of ``params`` (the universal fields) over the processes whose step had a
        gradient; returns how many did (the same on every process, as are the averaged gradients).

        A parameter that no process's loss reached keeps ``grad = None``, so the optimiser skips it as it
        would in one process; one reached elsewhere only counts as a zero gradient here."""
        if self.size == 1:
            return int(had_grad)
        flags = torch.tensor([p.grad is not None for p in params] + [had_grad], dtype=torch.float32, device=self.device)
        grads = [p.grad.reshape(-1) if p.grad is not None else p.detach().new_zeros(p.numel()) for p in params]
        flat = torch.cat([*grads, flags])
        dist.all_reduce(flat)
        counts = flat[flat.numel() - flags.numel():].tolist()
        frames = int(round(counts[-1]))
        offset = 0
        for p, reached in zip(params, counts[:-1]):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).div_(frames) if reached > 0 and frames else None
            offset += n
        return frames

    def gather_rows(self, rows: Tensor, count: int) -> Tensor:
        """Every process's ``rows`` ``[len(shard(count)), P]`` (one per identity it trains) -> ``[count, P]``
        in identity order."""
        if self.size == 1:
            return rows
        per = -(-count // self.size)
        padded = rows.new_zeros(per, rows.shape[1])
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.stack([parts[g % self.size][g // self.size] for g in range(count)])

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the processes."""
        if self.size == 1:
            return [bool(f) for f in flags]
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [v > 0 for v in t.tolist()]

    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Overwrite ``tensors`` with process 0's values (in place)."""
        if self.size == 1:
            return
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def gather_state(self, index: list[int], tensors: dict[str, Tensor], optim: dict) -> tuple[dict[str, Tensor], dict] | None:
        """Process 0: every process's identity tensors and optimiser states merged into the layout one process
        writes (``id<k>.*``, ``gauss<k>``, ``personal<k>``, ``seen``; the universal parts are process 0's,
        the same everywhere); None on the other processes. ``index``: the identities this process trains."""
        if self.size == 1:
            return tensors, optim
        if self.is_main:
            part = (index, tensors, optim)
        else:
            own = {k for g in index for k in (f"gauss{g}", f"personal{g}")}
            part = (index, {k: v for k, v in tensors.items() if IDENTITY_KEY.match(k)},
                    _to_cpu({**{k: v for k, v in optim.items() if k in own}, "seen": optim["seen"]}))
        parts: list | None = [None] * self.size if self.is_main else None
        dist.gather_object(part, parts, dst=0)
        if not self.is_main:
            return None
        merged_tensors: dict[str, Tensor] = {}
        merged_optim = dict(optim)
        seen = list(optim["seen"])
        for idx, t, o in parts:
            merged_tensors.update(t)
            merged_optim.update({k: v for k, v in o.items() if k != "seen"})
            for g in idx:
                seen[g] = o["seen"][g]
        merged_optim["seen"] = seen
        return merged_tensors, merged_optim

    def merge_log(self, history: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """Process 0: the loss logs of all processes joined (one entry per log point, the processes' mean);
        the other processes get their own back."""
        if self.size == 1:
            return history
        parts: list | None = [None] * self.size if self.is_main else None
        dist.gather_object(list(history), parts, dst=0)
        return merge_logs(parts, self.size) if self.is_main else history


def merge_logs(parts: list[list[tuple[int, float]]], size: int) -> list[tuple[int, float]]:
    """Join ``size`` processes' logs: entries less than ``size`` iterations apart (the processes log at their
    first iteration past each log point) become one, at the earliest iteration, with the mean value."""
    merged: list[tuple[int, float]] = []
    group: list[tuple[int, float]] = []
    for entry in sorted((int(i), float(v)) for part in parts for i, v in part):
        if group and entry[0] - group[0][0] >= size:
            merged.append((group[0][0], sum(v for _, v in group) / len(group)))
            group = []
        group.append(entry)
    if group:
        merged.append((group[0][0], sum(v for _, v in group) / len(group)))
    return merged


def _to_cpu(obj):
    """``obj`` with every tensor in it moved to the CPU (before pickling it to another process)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


SINGLE = World()


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> tuple[World, torch.device | None]:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) when there is one:
    NCCL with one GPU per process (``cuda:<LOCAL_RANK>``) when ``device`` is ``auto``/``cuda`` and CUDA is
    there, gloo on the CPU otherwise. Returns ``(SINGLE, None)`` outside torchrun (the caller picks the device)."""
    if not launched():
        return SINGLE, None
    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device not in ("auto", "cuda", "cpu"):
        raise InstagError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                          "pass --device cuda (or auto, or cpu)")
    if device == "cuda" and not torch.cuda.is_available():
        raise InstagError("--device cuda asked for CUDA but no CUDA GPU is visible; use --device cpu")
    if device != "cpu" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise InstagError(f"torchrun started more processes on this machine than the {count} CUDA GPU(s) visible; "
                              f"use --nproc_per_node {count} (or --device cpu)")
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=size)
    return World(rank, size, str(dev)), dev


def finish(world: World) -> None:
    """Leave the process group (after the last collective)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
