"""Tensor parallelism across hosts through torch.distributed's ``env://`` rendezvous.

Every rank is a process started by a launcher (torchrun, or by hand) with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set, all running the same program. Rank 0 becomes the
driver (the engine, the server); every other rank becomes a worker as soon as it builds its
engine, serves the driver's calls and exits the program when the driver shuts down.

The process group forms on MASTER_ADDR:MASTER_PORT (torch.distributed). The driver's calls
travel on authenticated multiprocessing connections to MASTER_ADDR:MASTER_PORT+1 (the same
message protocol as the spawned workers of one machine, so failures are reported alike)."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from multiprocessing.connection import Client, Listener

from vllm import envs
from vllm.config import VllmConfig
from vllm.logger import init_logger

logger = init_logger(__name__)

_CONNECT_TIMEOUT_S = 300.0


def rendezvous_env(world: int) -> tuple[int, int, str, int]:
    """(rank, local_rank, master_addr, master_port), checked against the TP size."""
    missing = [n for n in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if not envs.is_set(n)]
    if missing:
        raise ValueError("distributed_init_method='env://' needs " + ", ".join(missing)
                         + " in the environment (torchrun sets them)")
    rank, size = envs.get("RANK"), envs.get("WORLD_SIZE")
    if size != world:
        raise ValueError(f"WORLD_SIZE={size} but tensor_parallel_size={world}: launch one "
                         "process per tensor-parallel rank")
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={size})")
    local = envs.get("LOCAL_RANK")
    return rank, rank if local is None else local, envs.get("MASTER_ADDR"), envs.get("MASTER_PORT")


def _secret() -> bytes:
    return envs.get("VLLM_RENDEZVOUS_SECRET").encode()


def accept_workers(workers, world: int) -> tuple[str, int]:
    """Driver side: wait for ranks 1..world-1 to connect. Returns (init_method, local_rank)."""
    rank, local, addr, port = rendezvous_env(world)
    if rank != 0:
        raise RuntimeError("accept_workers runs on rank 0 only")
    listener = Listener(("0.0.0.0", port + 1), authkey=_secret())
    workers.listener = listener
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    # accept() has no timeout: a helper closes the listener at the deadline.
    timer = threading.Timer(_CONNECT_TIMEOUT_S, listener.close)
    timer.daemon = True
    timer.start()
    try:
        while len(workers.conns) < world - 1:
            try:
                conn = listener.accept()
            except OSError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"only {len(workers.conns)} of {world - 1} tensor-parallel ranks "
                        f"connected to {addr}:{port + 1} within {_CONNECT_TIMEOUT_S:.0f} s"
                    ) from None
                continue    # a bad handshake (wrong secret): keep listening
            kind, r = conn.recv()
            if kind != "hello" or not isinstance(r, int) or not 0 < r < world \
                    or r in workers.conns:
                conn.close()
                raise RuntimeError(f"unexpected rendezvous message {kind!r} {r!r}")
            workers.conns[r] = conn
    finally:
        timer.cancel()
    logger.info("All %d remote tensor-parallel ranks connected", world - 1)
    return "env://", local


def run_remote_worker(config: VllmConfig) -> None:
    """Worker side (rank > 0): connect to the driver, serve its calls, then end the process
    with the worker's status (the rest of the program is never run on this rank)."""
    from vllm.v1.engine.tp_executor import rank_device, worker_loop
    world = config.parallel_config.tensor_parallel_size
    rank, local, addr, port = rendezvous_env(world)
    signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is \
        threading.main_thread() else None
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    while True:
        try:
            conn = Client((addr, port + 1), authkey=_secret())
            break
        except (ConnectionRefusedError, socket.gaierror, OSError):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"rank {rank}: the driver at {addr}:{port + 1} did not "
                                   f"answer within {_CONNECT_TIMEOUT_S:.0f} s") from None
            time.sleep(0.2)
    conn.send(("hello", rank))
    logger.info("Rank %d connected to the driver at %s:%d", rank, addr, port + 1)
    rc = worker_loop(config, rank, world, "env://", conn, rank_device(config, rank, local))
    conn.close()
    logger.info("Rank %d: driver finished; exiting (status %d)", rank, rc)
    # Skip interpreter teardown: NCCL / CUDA destructors can block on peers that left.
    os._exit(rc)
