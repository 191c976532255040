"""Tensor parallelism over processes: rank 0 is this process (the driver), ranks 1..N-1 are
workers. Every runner call is mirrored on all ranks with identical inputs; the model layers
all-reduce / all-gather through torch.distributed (NCCL on GPUs, gloo on the CPU), and
sampling is replicated (identical logits and RNG state on every rank) so every rank's NWOR
commit sees the same acceptances. Only the driver's results are used.

Workers are either spawned here (one machine) or started by a launcher such as torchrun on
other hosts (``distributed_init_method="env://"``, see tp_remote.py); both talk to the driver
over a multiprocessing Connection. A monitor thread is the only reader of those connections:
a worker's error or death is recorded at once (and, on NCCL, aborts the communicator so the
driver's pending collective returns), and the driver's next check raises it naming the rank.
Nothing in shutdown waits without a deadline."""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import socket
import threading
import time
import traceback
import weakref
from dataclasses import replace
from multiprocessing.connection import wait as mp_wait
from typing import Any, Optional

import torch

from vllm import envs
from vllm.config import VllmConfig
from vllm.distributed.parallel_state import (abort_tensor_parallel, destroy_tensor_parallel,
                                             init_tensor_parallel)
from vllm.logger import init_logger

logger = init_logger(__name__)

# NVLink multicast (NVLS) off unless the user says otherwise: on shared multi-GPU hosts a program
# that uses it can take the host's GPUs out of service. Set before any rank starts, so the
# spawned workers inherit it.
NVLS_OFF_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                     "NVSHMEM_DISABLE_NVLS": "1"}

# Worker failures are handled here (the monitor aborts the communicator and the error names
# the rank); NCCL's own watchdog tearing the whole process down would take the server with it.
NCCL_DEFAULTS = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}

# Runner methods whose result the driver collects from every worker.
_REPLY_METHODS = ("profile_num_blocks",)


class TPWorkerError(RuntimeError):
    """A tensor-parallel worker failed (its traceback is in the message)."""

    def __init__(self, rank: int, detail: str):
        super().__init__(f"tensor-parallel worker rank {rank} failed: {detail}")
        self.rank = rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(config: VllmConfig, rank: int, local_rank: Optional[int] = None
                ) -> torch.device:
    dev = torch.device(config.device)
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", rank if local_rank is None else local_rank)


def make_runner(config: VllmConfig, rank: int, world: int, init_method: str,
                device: torch.device, before_init=None):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    if device.type == "cuda":
        torch.cuda.set_device(device)
        for name, value in {**NVLS_OFF_DEFAULTS, **NCCL_DEFAULTS}.items():
            envs.set_default(name, value)       # ranks started by a launcher have no parent
    if before_init is not None:
        before_init()
    init_tensor_parallel(rank, world, init_method, "nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(config.model_config.seed)
    return GPUModelRunner(replace(config, device=str(device)), device)


class _FaultInjector:
    """VLLM_TP_FAULT_INJECT='RANK:METHOD:N': this rank raises on its N-th METHOD call."""

    def __init__(self, rank: int):
        self.method, self.n, self.calls = None, 0, 0
        spec = envs.get("VLLM_TP_FAULT_INJECT")
        if not spec:
            return
        try:
            r, method, n = spec.split(":")
            r, n = int(r), int(n)
        except ValueError:
            raise ValueError(f"VLLM_TP_FAULT_INJECT={spec!r} is invalid; expected "
                             "'RANK:METHOD:N'") from None
        if r == rank:
            self.method, self.n = method, n

    def check(self, method: str, rank: int) -> None:
        if method == self.method:
            self.calls += 1
            if self.calls == self.n:
                raise RuntimeError(f"injected fault (VLLM_TP_FAULT_INJECT) on rank {rank}, "
                                   f"{method} call {self.n}")


def worker_loop(config: VllmConfig, rank: int, world: int, init_method: str, conn,
                device: torch.device) -> int:
    """Serve the driver's calls until it says shutdown (0) or something fails (1). Never
    tears the process group down: the process exits right after, which is what peers see."""
    try:
        faults = _FaultInjector(rank)
        # "joining" right before the rendezvous: the driver enters it only when every worker
        # got this far (a failure earlier is reported instead of a rendezvous that never ends).
        runner = make_runner(config, rank, world, init_method, device,
                             before_init=lambda: conn.send(("joining", None)))
        conn.send(("ready", None))
        while True:
            try:
                method, args = conn.recv()
            except (EOFError, OSError):
                logger.warning("TP rank %d: the driver is gone; exiting", rank)
                return 1
            if method == "shutdown":
                return 0
            faults.check(method, rank)
            result = getattr(runner, method)(*args)
            if method in _REPLY_METHODS:
                conn.send(("ok", result))
    except BaseException:  # noqa: BLE001 - report everything, then exit
        try:
            conn.send(("error", traceback.format_exc()))
        except (OSError, ValueError):
            pass
        return 1


def _worker_main(config: VllmConfig, rank: int, world: int, init_method: str, conn) -> None:
    # Ctrl-C reaches the whole terminal process group; the driver decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = mp.parent_process()
    if parent is not None:
        # The driver died without a shutdown (SIGKILL, crash): do not outlive it, even when
        # blocked in a collective that will never complete.
        def watch():
            mp_wait([parent.sentinel])
            os._exit(1)
        threading.Thread(target=watch, name="vllm-parent-watch", daemon=True).start()
    rc = worker_loop(config, rank, world, init_method, conn, rank_device(config, rank))
    try:
        conn.close()
    finally:
        # No interpreter teardown: NCCL / CUDA destructors can block on peers that left.
        os._exit(rc)


class _Workers:
    """Processes and connections of the workers; what a finalizer needs (no executor ref)."""

    def __init__(self):
        self.conns: dict[int, Any] = {}       # rank -> Connection
        self.procs: dict[int, Any] = {}       # rank -> Process (spawned here only)
        self.closing = False
        self.listener = None

    def stop(self, timeout: float) -> None:
        """Tell every worker to exit; terminate, then kill, what is still there at the
        deadline. Returns within about timeout + 2 s."""
        self.closing = True
        for c in list(self.conns.values()):
            try:
                c.send(("shutdown", ()))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for sig in ("terminate", "kill"):
            alive = [p for p in self.procs.values() if p.is_alive()]
            if not alive:
                break
            logger.warning("%d TP worker(s) still running after shutdown; %s", len(alive), sig)
            for p in alive:
                getattr(p, sig)()
            for p in alive:
                p.join(1.0)
        for c in self.conns.values():
            try:
                c.close()
            except OSError:
                pass
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.conns.clear()
        self.procs.clear()


def _finalize(workers: _Workers) -> None:
    # At interpreter exit or when the executor is collected without shutdown() (e.g. the
    # user's script raised): leave no process behind.
    if workers.conns or workers.procs:
        workers.closing = True
        destroy_tensor_parallel(timeout_s=2.0)
        workers.stop(timeout=1.0)


class MultiprocTPExecutor:
    def __init__(self, config: VllmConfig):
        pc = config.parallel_config
        world = pc.tensor_parallel_size
        on_cuda = torch.device(config.device).type == "cuda"
        remote = pc.distributed_init_method == "env://"
        if on_cuda and not remote and torch.cuda.device_count() < world:
            raise ValueError(f"tensor_parallel_size={world} but only "
                             f"{torch.cuda.device_count()} GPUs are visible")
        if on_cuda:
            for name, value in {**NVLS_OFF_DEFAULTS, **NCCL_DEFAULTS}.items():
                envs.set_default(name, value)
        self._faults = _FaultInjector(0)    # a malformed spec fails here, before spawning
        self.world = world
        self.workers = _Workers()
        self._replies: dict[int, queue.Queue] = {r: queue.Queue() for r in range(1, world)}
        self._failure: Optional[TPWorkerError] = None
        self._failed = threading.Event()
        self._shut = False
        self._finalizer = weakref.finalize(self, _finalize, self.workers)
        try:
            if remote:
                from vllm.v1.engine import tp_remote
                init_method, local_rank = tp_remote.accept_workers(self.workers, world)
            else:
                init_method, local_rank = self._spawn_workers(config, world), None
            self._monitor = threading.Thread(target=self._watch, name="vllm-tp-monitor",
                                             daemon=True)
            self._monitor.start()
            for r in range(1, world):
                self._reply(r, "joining")
            self.driver_runner = make_runner(config, 0, world, init_method,
                                             rank_device(config, 0, local_rank))
            for r in range(1, world):
                self._reply(r, "ready")
        except BaseException:
            self.shutdown()
            raise
        logger.info("Tensor parallel: %d ranks (%s)", world, init_method)

    def _spawn_workers(self, config: VllmConfig, world: int) -> str:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = mp.get_context("spawn")
        for rank in range(1, world):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(config, rank, world, init_method, child),
                            daemon=True, name=f"vllm-tp-rank{rank}")
            p.start()
            child.close()
            self.workers.conns[rank] = parent
            self.workers.procs[rank] = p
        return init_method

    # ------------------------------------------------------------------ failure tracking
    def _fail(self, rank: int, detail: str) -> None:
        if self._failure is None and not self.workers.closing:
            self._failure = TPWorkerError(rank, detail)
            logger.error("%s", self._failure)
            self._failed.set()
            abort_tensor_parallel()     # NCCL: the driver's pending collective returns

    def _watch(self) -> None:
        """The only reader of the workers' connections: replies go to per-rank queues,
        errors and deaths are recorded."""
        w = self.workers
        conns = dict(w.conns)
        sentinels = {p.sentinel: r for r, p in w.procs.items()}
        while conns and not w.closing:
            ready = mp_wait(list(conns.values()) + list(sentinels), timeout=0.5)
            for obj in ready:
                if obj in sentinels:
                    continue
                rank = next(r for r, c in conns.items() if c is obj)
                try:
                    kind, payload = obj.recv()
                except (EOFError, OSError):
                    conns.pop(rank)
                    self._fail(rank, "the worker exited (its connection closed)")
                    continue
                if kind == "error":
                    self._fail(rank, f"\n{payload}")
                else:
                    self._replies[rank].put((kind, payload))
            for s in [s for s in ready if s in sentinels]:
                rank = sentinels.pop(s)
                c = conns.get(rank)
                if c is not None and c.poll():
                    continue        # read its last message first (next round)
                conns.pop(rank, None)
                w.procs[rank].join(0.5)        # reap it: exitcode is None until then
                self._fail(rank, f"the worker process exited with code "
                                 f"{w.procs[rank].exitcode}")

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._shut:
            raise RuntimeError("the tensor-parallel executor is shut down")

    def _reply(self, rank: int, expect: str):
        while True:
            self._check()
            try:
                kind, payload = self._replies[rank].get(timeout=0.2)
            except queue.Empty:
                continue
            if kind != expect:
                raise RuntimeError(f"TP rank {rank}: expected {expect!r}, got {kind!r}")
            return payload

    # ------------------------------------------------------------------ calls
    def _call(self, method: str, *args):
        self._check()
        for rank, c in self.workers.conns.items():
            try:
                c.send((method, args))
            except (OSError, ValueError):
                self._failed.wait(2.0)
                self._check()
                raise TPWorkerError(rank, "its connection is closed") from None
        try:
            self._faults.check(method, 0)
            out = getattr(self.driver_runner, method)(*args)
        except Exception as e:
            # A peer's failure makes the driver's collective fail too (gloo: connection
            # closed; NCCL: aborted): report the cause, the worker's error.
            if self._failed.wait(3.0):
                raise self._failure from e
            # The driver failed alone: the workers may now wait in a collective it never
            # reached, so no later call may run (it would hang).
            self._failure = TPWorkerError(0, f"the driver failed in {method}: {e!r}")
            self._failure.__cause__ = e
            self._failed.set()
            abort_tensor_parallel()
            raise
        self._check()
        return out

    def determine_num_blocks(self) -> int:
        n = self._call("profile_num_blocks")
        return min([n] + [self._reply(r, "ok") for r in range(1, self.world)])

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self._call("initialize_kv_cache", num_blocks)

    def execute_model(self, so):
        return self._call("execute_model", so)

    def propose(self, reqs):
        return self._call("propose", reqs)

    def spec_decode_counters(self):
        # Every rank makes the same decisions; the driver's counters speak for all of them.
        return self.driver_runner.spec_decode_counters()

    def shutdown(self) -> None:
        """Within about VLLM_SHUTDOWN_TIMEOUT + 7 s whatever the workers' state."""
        if self._shut:
            return
        self._shut = True
        self.workers.closing = True         # workers leaving now is not a failure
        # The driver's group goes first (local on NCCL: an abort), so no watchdog of ours ever
        # sees peers vanish under a live communicator; then the workers exit.
        destroy_tensor_parallel()
        self.workers.stop(envs.get("VLLM_SHUTDOWN_TIMEOUT"))
        mon = getattr(self, "_monitor", None)
        if mon is not None:
            mon.join(1.0)
        self._finalizer.detach()
