"""Run a test function in several CPU processes joined by a gloo process group.

``run_in_processes(fn, 2, *args)`` spawns ``world_size`` fresh interpreters, points them at
``127.0.0.1`` and a free port with torchrun's variables, creates the group with
``selfsup.dist.init_from_env("cpu")``, calls ``fn(rank, world_size, *args)`` in each and returns the
per-rank results in rank order. ``fn`` must be a module-level function (spawn pickles it by name) and
should take and return picklable plain data (numpy arrays, floats), not tensors. An exception in any
rank is raised here with that rank's traceback; the other ranks are stopped rather than left waiting
in a collective.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((name for name in names if name.startswith("lo")), None)


def _worker(
    rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...], results: Any
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    # Keep gloo's traffic on the loopback interface instead of whatever the hostname resolves to.
    interface = _loopback_interface()
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    try:
        import torch

        from selfsup import dist

        torch.set_num_threads(1)  # the ranks share the machine's cores
        if not dist.init_from_env("cpu"):
            raise RuntimeError("init_from_env('cpu') did not create a process group")
        try:
            results.put((rank, True, fn(rank, world_size, *args)))
        finally:
            dist.destroy()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_in_processes(
    fn: Callable[..., Any], world_size: int = 2, *args: Any, timeout: float = 120.0
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` gloo-connected processes; per-rank results."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    processes = [
        ctx.Process(target=_worker, args=(rank, world_size, port, fn, args, results), daemon=True)
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outputs: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outputs) < world_size:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    codes = ", ".join(f"rank {processes.index(p)}: exit code {p.exitcode}" for p in dead)
                    raise RuntimeError(f"a worker died without reporting ({codes})") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers did not finish within {timeout:.0f} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} of {world_size} failed:\n{value}")
            outputs[rank] = value
    finally:
        for process in processes:
            process.join(timeout=10.0 if len(outputs) == world_size else 0.0)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5.0)
    return [outputs[rank] for rank in range(world_size)]
