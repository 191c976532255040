"""Data parallelism: N engine replicas, one process each (each with its own GPU, or its own
tensor-parallel group of GPUs), behind one server.

``DPEngine`` has the part of LLMEngine's interface the server's AsyncEngine drives
(add_request, abort_request, has_unfinished_requests, step, stats, shutdown), so the server
runs unchanged. The front-end validates and tokenizes each prompt, sends it to the replica
with the fewest outstanding requests, and ``step`` returns whatever outputs the replicas have
produced since the last call. Each replica runs LLMEngine.step in its own loop and sends its
outputs (and, at most every STATS_PERIOD_S and when it goes idle, a stats snapshot) back.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import weakref
from multiprocessing.connection import wait as mp_wait
from typing import Optional, Union

import torch

from vllm import envs
from vllm.engine.arg_utils import EngineArgs
from vllm.logger import init_logger
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.v1.engine import dp_stats
from vllm.v1.engine.llm_engine import normalize_prompt, resolve_eos_token_id, tokenize_with
from vllm.v1.metrics.stats import EngineStats

logger = init_logger(__name__)

STATS_PERIOD_S = 0.25
# How long step() waits for a replica's output before returning (so the server's loop can
# apply newly arrived requests).
_STEP_WAIT_S = 0.005


def make_serving_engine(args: EngineArgs):
    """The engine behind `vllm serve`: one LLMEngine, or DPEngine for data_parallel_size > 1."""
    if args.data_parallel_size > 1:
        return DPEngine(args)
    from vllm.v1.engine.llm_engine import LLMEngine
    return LLMEngine.from_engine_args(args)


# ---------------------------------------------------------------------------- replica side
def _replica_main(args: EngineArgs, index: int, num_threads: int, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the server decides when replicas stop
    parent = mp.parent_process()

    def watch():
        mp_wait([parent.sentinel])
        os._exit(1)
    threading.Thread(target=watch, name="vllm-parent-watch", daemon=True).start()
    if num_threads:
        torch.set_num_threads(num_threads)
    engine = None
    try:
        from vllm.v1.engine.llm_engine import LLMEngine
        engine = LLMEngine.from_engine_args(args)
        conn.send(("ready", dp_stats.snapshot(engine.stats)))
        _replica_loop(engine, conn)
        rc = 0
    except BaseException:  # noqa: BLE001 - report, then exit
        try:
            conn.send(("error", traceback.format_exc()))
        except (OSError, ValueError):
            pass
        rc = 1
    try:
        if engine is not None:
            engine.shutdown()
    finally:
        os._exit(rc)


def _replica_loop(engine, conn) -> None:
    last_stats = 0.0
    while True:
        busy = engine.has_unfinished_requests()
        if not busy:
            conn.poll(None)
        while conn.poll(0):
            kind, payload = conn.recv()
            if kind == "add":
                for rid, prompt, params in payload:
                    try:
                        engine.add_request(rid, prompt, params)
                    except Exception as e:  # noqa: BLE001 - the front-end validated already
                        conn.send(("reject", (rid, f"{type(e).__name__}: {e}")))
            elif kind == "abort":
                engine.abort_request(payload)
            elif kind == "shutdown":
                return
        if not engine.has_unfinished_requests():
            if busy:        # just went idle (aborts): publish final gauges and counters
                engine._refresh_gauges()
                conn.send(("out", ([], dp_stats.snapshot(engine.stats))))
            continue
        try:
            outs = engine.step(stream=True)
        except Exception:  # noqa: BLE001
            failed = list(engine.parents)
            engine.abort_request(failed)
            conn.send(("step_error", (traceback.format_exc(), failed)))
            continue
        now = time.monotonic()
        stats = None
        if now - last_stats >= STATS_PERIOD_S or not engine.has_unfinished_requests():
            stats, last_stats = dp_stats.snapshot(engine.stats), now
        conn.send(("out", (outs, stats)))


# ---------------------------------------------------------------------------- front-end side
class _Replica:
    def __init__(self, index: int, proc, conn):
        self.index = index
        self.proc = proc
        self.conn = conn
        self.outstanding: set[str] = set()
        self.alive = True
        self.stats: Optional[EngineStats] = None


def _stop_replicas(replicas: list[_Replica], timeout: float) -> None:
    for r in replicas:
        try:
            r.conn.send(("shutdown", None))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + timeout
    for r in replicas:
        r.proc.join(max(0.0, deadline - time.monotonic()))
    for sig in ("terminate", "kill"):
        alive = [r for r in replicas if r.proc.is_alive()]
        if not alive:
            break
        logger.warning("%d data-parallel replica(s) still running after shutdown; %s",
                       len(alive), sig)
        for r in alive:
            getattr(r.proc, sig)()
        for r in alive:
            r.proc.join(2.0)
    for r in replicas:
        r.alive = False
        try:
            r.conn.close()
        except OSError:
            pass


def _visible_devices(n: int, tp: int) -> list[Optional[str]]:
    """CUDA_VISIBLE_DEVICES of each replica: consecutive groups of tp GPUs."""
    if not torch.cuda.is_available():
        return [None] * n
    visible = envs.get("CUDA_VISIBLE_DEVICES")
    ids = ([d.strip() for d in visible.split(",") if d.strip()] if visible
           else [str(i) for i in range(torch.cuda.device_count())])
    if len(ids) < n * tp:
        raise ValueError(f"data_parallel_size={n} x tensor_parallel_size={tp} needs {n * tp} "
                         f"GPUs; {len(ids)} are visible")
    return [",".join(ids[i * tp:(i + 1) * tp]) for i in range(n)]


class DPEngine:
    def __init__(self, args: EngineArgs):
        if args.distributed_init_method is not None:
            raise ValueError("data_parallel_size > 1 with distributed_init_method='env://' is "
                             "not supported: run one `vllm serve` per replica (docs/"
                             "distributed.md)")
        # The front-end needs the config and tokenizer only: no weights are loaded here.
        self.config, self.tokenizer = args.create_config()
        pc = self.config.parallel_config
        n, tp = pc.data_parallel_size, pc.tensor_parallel_size
        self.max_model_len = self.config.scheduler_config.max_model_len
        self.vocab_size = self.config.model_config.vocab_size
        self.eos_token_id = resolve_eos_token_id(self.config, self.tokenizer)
        self.stats = EngineStats(model_name=self.config.model_config.served_model_name)
        self.stats.engine_id = "all"
        self._owner: dict[str, _Replica] = {}
        self._pending: list[RequestOutput] = []
        self._errors: list[str] = []
        on_cpu = torch.device(self.config.device).type == "cpu"
        threads = max(1, (os.cpu_count() or n) // n) if on_cpu else 0
        devices = _visible_devices(n, tp) if not on_cpu else [None] * n
        replica_args = dataclasses.replace(args, data_parallel_size=1)
        ctx = mp.get_context("spawn")
        self.replicas: list[_Replica] = []
        self._finalizer = weakref.finalize(self, _stop_replicas, self.replicas, 1.0)
        try:
            for i in range(n):
                parent, child = ctx.Pipe()
                env = {"CUDA_VISIBLE_DEVICES": devices[i]} if devices[i] is not None else {}
                # Not daemonic: a replica with tensor parallelism starts worker processes.
                p = ctx.Process(target=_replica_main, args=(replica_args, i, threads, child),
                                name=f"vllm-dp-replica{i}", daemon=False)
                with envs.scoped(env):
                    p.start()
                child.close()
                self.replicas.append(_Replica(i, p, parent))
            for r in self.replicas:
                kind, payload = self._recv_start(r)
                if kind != "ready":
                    raise RuntimeError(f"data-parallel replica {r.index} failed to start:\n"
                                       f"{payload}")
                r.stats = dp_stats.adopt(payload, r.index)
        except BaseException:
            self.shutdown()
            raise
        self._refresh_gauges()
        logger.info("Data parallel: %d replicas x tensor_parallel_size %d", n, tp)

    def _recv_start(self, r: _Replica):
        while True:
            if r.conn.poll(0.5):
                try:
                    return r.conn.recv()
                except EOFError:
                    return "error", f"exited with code {r.proc.exitcode}"
            if not r.proc.is_alive() and not r.conn.poll(0):
                return "error", f"exited with code {r.proc.exitcode}"

    # ------------------------------------------------------------------ requests
    def tokenize(self, prompt: str) -> list[int]:
        return tokenize_with(self.tokenizer, prompt)

    def _normalize(self, prompt: Union[str, list[int], dict]) -> dict:
        """The same checks as LLMEngine.add_request, here so that bad input is refused at
        once (the replica gets token ids and never re-tokenizes)."""
        text, ids = normalize_prompt(prompt, self.tokenize, self.vocab_size,
                                     self.max_model_len)
        return {"prompt_token_ids": ids, "prompt": text}

    def add_request(self, request_id: str, prompt: Union[str, list[int], dict],
                    params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise ValueError("sampling_params must be a SamplingParams")
        if request_id in self._owner:
            raise ValueError(f"request_id {request_id!r} is already in use")
        p = self._normalize(prompt)
        alive = [r for r in self.replicas if r.alive]
        if not alive:
            raise RuntimeError("no data-parallel replica is running")
        r = min(alive, key=lambda x: (len(x.outstanding), x.index))   # least outstanding
        r.conn.send(("add", [(request_id, p, params)]))
        r.outstanding.add(request_id)
        self._owner[request_id] = r

    def abort_request(self, request_ids) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        by_replica: dict[int, list[str]] = {}
        for rid in request_ids:
            r = self._owner.pop(rid, None)
            if r is not None:
                r.outstanding.discard(rid)
                by_replica.setdefault(r.index, []).append(rid)
        for i, ids in by_replica.items():
            r = self.replicas[i]
            if r.alive:
                try:
                    r.conn.send(("abort", ids))
                except (OSError, ValueError):
                    pass

    def has_unfinished_requests(self) -> bool:
        return bool(self._owner)

    def get_num_unfinished_requests(self) -> int:
        return len(self._owner)

    def replica_loads(self) -> list[int]:
        return [len(r.outstanding) for r in self.replicas]

    # ------------------------------------------------------------------ outputs
    def step(self, stream: bool = False) -> list[RequestOutput]:
        live = {r.conn: r for r in self.replicas if r.alive}
        sentinels = {r.proc.sentinel: r for r in self.replicas if r.alive}
        if live and not self._pending:
            ready = mp_wait(list(live) + list(sentinels), timeout=_STEP_WAIT_S)
            for obj in ready:
                r = live.get(obj)
                if r is not None:
                    self._drain(r)
            for obj in ready:
                r = sentinels.get(obj)
                if r is not None and r.alive and not r.conn.poll(0):
                    self._replica_died(r, f"exited with code {r.proc.exitcode}")
        outs, self._pending = self._pending, []
        if self._errors:
            errs, self._errors = self._errors, []
            raise RuntimeError("; ".join(errs))
        return outs if stream else [o for o in outs if o.finished]

    def _drain(self, r: _Replica) -> None:
        while r.alive and r.conn.poll(0):
            try:
                kind, payload = r.conn.recv()
            except (EOFError, OSError):
                self._replica_died(r, "its connection closed")
                return
            if kind == "out":
                outs, stats = payload
                for o in outs:
                    if self._owner.get(o.request_id) is not r:
                        continue        # aborted meanwhile
                    if o.finished:
                        del self._owner[o.request_id]
                        r.outstanding.discard(o.request_id)
                    self._pending.append(o)
                if stats is not None:
                    r.stats = dp_stats.adopt(stats, r.index)
            elif kind == "reject":
                rid, msg = payload
                logger.error("data-parallel replica %d refused request %s: %s", r.index, rid,
                             msg)
                if self._owner.pop(rid, None) is r:
                    r.outstanding.discard(rid)
                    self._pending.append(_aborted_output(rid))
            elif kind == "step_error":
                tb, failed = payload
                for rid in failed:
                    if self._owner.get(rid) is r:
                        del self._owner[rid]
                        r.outstanding.discard(rid)
                self._errors.append(f"data-parallel replica {r.index} step failed:\n{tb}")
            elif kind == "error":
                self._replica_died(r, f"\n{payload}")

    def _replica_died(self, r: _Replica, why: str) -> None:
        if not r.alive:
            return
        r.alive = False
        lost = [rid for rid, owner in self._owner.items() if owner is r]
        for rid in lost:
            del self._owner[rid]
        r.outstanding.clear()
        msg = f"data-parallel replica {r.index} failed ({len(lost)} request(s) lost): {why}"
        logger.error("%s", msg)
        self._errors.append(msg)

    # ------------------------------------------------------------------ stats
    def all_stats(self) -> list[EngineStats]:
        """For /metrics: the sum (engine="all") and each replica (engine="<index>")."""
        parts = [r.stats for r in self.replicas if r.stats is not None]
        with self.stats.lock:
            dp_stats.sum_into(self.stats, parts)
        return [self.stats] + parts

    def _refresh_gauges(self) -> None:
        dp_stats.sum_into(self.stats, [r.stats for r in self.replicas if r.stats is not None])

    def shutdown(self) -> None:
        """Stops every replica within about VLLM_SHUTDOWN_TIMEOUT + 4 s. Idempotent."""
        if self._finalizer.alive:
            self._finalizer.detach()
            _stop_replicas(self.replicas, envs.get("VLLM_SHUTDOWN_TIMEOUT"))


def _aborted_output(rid: str) -> RequestOutput:
    return RequestOutput(rid, None, [], [CompletionOutput(0, "", [], None, None, "abort")],
                         True)

