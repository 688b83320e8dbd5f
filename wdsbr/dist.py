"""Rank helpers: who am I in the job, importable without deepspeed and without a process group.

Rank information comes from the environment the launcher sets (deepspeed, torchrun: RANK/WORLD_SIZE/
LOCAL_RANK; Slurm's srun: SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID), or from an initialised process group.
"""

from __future__ import annotations

import os
import socket
import sys

from tqdm.auto import tqdm


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def _process_group():
    """torch.distributed when a process group is up; never imports torch itself (CLIs start faster)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    return torch.distributed


def rank() -> int:
    if (group := _process_group()) is not None:
        return group.get_rank()
    return _env_int("RANK", "SLURM_PROCID", default=0)


def world_size() -> int:
    if (group := _process_group()) is not None:
        return group.get_world_size()
    return _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)


def is_main() -> bool:
    return rank() == 0


def say(message: str, *, err: bool = False) -> None:
    """One line on rank 0's stdout (stderr with `err`), written through tqdm so a progress bar stays whole."""
    if is_main():
        tqdm.write(message, file=sys.stderr if err else sys.stdout)


def free_port() -> int:
    """A free loopback port for a launcher's rendezvous (tests and benches start launchers one after another)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def every_rank(value) -> list:
    """Collective: all ranks. Every rank's `value` (picklable), in rank order; [value] without a process group."""
    group = _process_group()
    if group is None:
        return [value]
    parts: list = [None] * group.get_world_size()
    group.all_gather_object(parts, value)
    return parts
