"""AsyncEngine: the synchronous LLMEngine driven by one background thread, for asyncio callers.

The engine is not thread-safe, so exactly one thread (the engine loop) ever touches it after
construction. Callers on the event loop never call the engine: they append operations ("add
these requests", "abort those") to a list guarded by a condition variable and wake the loop.

The loop, each iteration:
  1. sleeps on the condition while there is nothing to do (no pending ops, no unfinished
     requests): an idle server burns no CPU;
  2. takes the pending ops and applies them (add_request / abort_request); the result of each
     add (accepted, or the ValueError it raised) goes back to the caller's stream;
  3. runs one ``engine.step(stream=True)`` if any request is unfinished; new requests join the
     running batch at the next step (continuous batching is the scheduler's job);
  4. hands every RequestOutput of the step to the asyncio queue of its request, in ONE
     ``loop.call_soon_threadsafe`` callback per iteration.

The engine's stats lock is held while the engine runs (ops + step), so a /metrics scrape on
another thread sees a consistent snapshot between steps.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterable, Optional

from vllm.logger import init_logger
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

logger = init_logger(__name__)

# Kinds of items put on a RequestStream's queue.
ADDED = "added"      # all requests of the stream were accepted by the engine
ERROR = "error"      # payload: an Exception; the stream is over
OUTPUT = "output"    # payload: a RequestOutput (cumulative)


class EngineDeadError(RuntimeError):
    """The engine loop is not running (it failed, or the server is shutting down)."""


class RequestFailedError(RuntimeError):
    """This request (alone) failed inside the engine; the others carried on."""


class RequestStream:
    """The outputs of one HTTP request's engine requests (one per prompt), in arrival order.

    Created on the event loop; filled from the engine thread through call_soon_threadsafe.
    """

    def __init__(self, engine: "AsyncEngine", request_ids: list[str]):
        self._engine = engine
        self.request_ids = list(request_ids)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.unfinished = set(request_ids)
        self.closed = False          # no more items will come (finished, error or aborted)

    async def wait_added(self) -> None:
        """Wait until the engine accepted the requests; raise the engine's error otherwise
        (ValueError for bad input, e.g. a prompt longer than max_model_len)."""
        kind, payload = await self.queue.get()
        if kind == ERROR:
            self.closed = True
            raise payload
        assert kind == ADDED, kind

    async def next_output(self) -> RequestOutput:
        kind, payload = await self.queue.get()
        if kind == ERROR:
            self.closed = True
            raise payload
        out: RequestOutput = payload
        if out.finished:
            self.unfinished.discard(out.request_id)
            if not self.unfinished:
                self.closed = True
        return out

    @property
    def finished(self) -> bool:
        return not self.unfinished

    def abort(self) -> None:
        """Abort whatever is still running (client gone, handler cancelled). Idempotent."""
        if self.unfinished and not self.closed:
            self.closed = True
            self._engine.abort(list(self.unfinished))


class AsyncEngine:
    def __init__(self, engine):
        self.engine = engine
        self._cond = threading.Condition()
        self._ops: list[tuple[str, Any]] = []
        self._stopping = False
        self._draining: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # Owned by the engine thread: engine request id -> its stream.
        self._streams: dict[str, RequestStream] = {}
        self.dead: Optional[BaseException] = None
        self.stats = engine.stats
        self._refresh = getattr(engine, "_refresh_gauges", None)

    # ------------------------------------------------------------------ lifecycle
    def start(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        if self._thread is not None:
            return
        self._loop = loop or asyncio.get_running_loop()
        # Gauges (free KV blocks, ...) are only refreshed by step(); publish the idle values.
        if self._refresh is not None:
            with self.stats.lock:
                self._refresh()
        self._thread = threading.Thread(target=self._run, name="vllm-engine-loop", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return (self._thread is not None and self._thread.is_alive() and not self._stopping
                and self.dead is None and self._draining is None)

    def fail_all(self, message: str = "the server is shutting down") -> None:
        """Graceful-shutdown deadline: every request still running gets ``message`` as an
        error (streams end with an error event), and new requests are refused."""
        self._draining = message
        self._submit(("fail_all", message))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the loop: requests still running are aborted and their streams get an error.
        Then shut the engine (executor) down. Safe to call more than once."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                logger.error("engine loop did not stop within %.0f s", timeout)
                return
        try:
            self.engine.shutdown()
        except Exception:  # noqa: BLE001 - shutting down anyway
            logger.exception("engine shutdown failed")

    # ------------------------------------------------------------------ caller side
    def add_requests(self, requests: list[tuple[str, Any, SamplingParams]]) -> RequestStream:
        """Queue requests (request_id, prompt, params) as one group; returns their stream.
        Call ``await stream.wait_added()`` next: it raises if any of them was rejected (then
        none of them runs)."""
        if not self.is_running:
            raise EngineDeadError(self._draining or "the engine is not running"
                                  + (f": {self.dead}" if self.dead else ""))
        stream = RequestStream(self, [r[0] for r in requests])
        self._submit(("add", (stream, requests)))
        return stream

    def abort(self, request_ids: Iterable[str]) -> None:
        ids = list(request_ids)
        if ids:
            self._submit(("abort", ids))

    def _submit(self, op: tuple[str, Any]) -> None:
        with self._cond:
            self._ops.append(op)
            self._cond.notify()

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        eng = self.engine
        try:
            while True:
                with self._cond:
                    while (not self._ops and not self._stopping
                           and not eng.has_unfinished_requests()):
                        self._cond.wait()
                    ops, self._ops = self._ops, []
                    stopping = self._stopping
                deliveries: list[tuple[RequestStream, tuple[str, Any]]] = []
                with self.stats.lock:
                    for kind, payload in ops:
                        if kind == "add":
                            self._apply_add(payload, deliveries)
                        elif kind == "abort":
                            self._apply_abort(payload)
                        else:   # fail_all
                            self._abort_all(deliveries, EngineDeadError(payload))
                    if stopping:
                        self._abort_all(deliveries, EngineDeadError("the server is shutting "
                                                                    "down"))
                    elif eng.has_unfinished_requests():
                        self._step(deliveries)
                    if ops and not eng.has_unfinished_requests() and \
                            self._refresh is not None:
                        self._refresh()     # aborts freed blocks: publish the gauges now
                self._deliver(deliveries)
                if stopping:
                    return
        except BaseException as e:  # noqa: BLE001 - the loop must report, not vanish
            logger.exception("engine loop crashed")
            self.dead = e
            deliveries = []
            try:
                self._abort_all(deliveries, EngineDeadError(f"engine loop crashed: {e!r}"))
            except Exception:  # noqa: BLE001
                pass
            self._deliver(deliveries)

    def _apply_add(self, payload, deliveries) -> None:
        stream, requests = payload
        eng = self.engine
        added = []
        try:
            for rid, prompt, params in requests:
                eng.add_request(rid, prompt, params)
                added.append(rid)
        except Exception as e:  # noqa: BLE001 - ValueError: bad input; others: reported too
            if added:
                eng.abort_request(added)
            deliveries.append((stream, (ERROR, e)))
            return
        for rid in added:
            self._streams[rid] = stream
        deliveries.append((stream, (ADDED, None)))

    def _apply_abort(self, ids: list[str]) -> None:
        live = [i for i in ids if self._streams.pop(i, None) is not None]
        if live:
            self.engine.abort_request(live)

    def _abort_all(self, deliveries, err: Exception) -> None:
        ids = list(self._streams)
        streams = {id(s): s for s in self._streams.values()}
        self._streams.clear()
        if ids:
            try:
                self.engine.abort_request(ids)
            finally:
                for s in streams.values():
                    deliveries.append((s, (ERROR, err)))

    def _step(self, deliveries) -> None:
        try:
            outs = self.engine.step(stream=True)
        except Exception as e:  # noqa: BLE001
            if self._fail_culprits(e, deliveries):
                return
            # Nobody to blame: fail everything in flight; the engine stays up for the next
            # requests (if the abort itself fails, the loop dies and /health reports it).
            logger.exception("engine step failed; aborting %d request(s)", len(self._streams))
            self._abort_all(deliveries, RuntimeError(f"engine step failed: {e!r}"))
            return
        for out in outs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            deliveries.append((stream, (OUTPUT, out)))

    def _fail_culprits(self, exc: Exception, deliveries) -> bool:
        """Fault isolation: if the engine can pin the failed step on some requests, fail only
        their streams (and their sibling prompts); True when it did."""
        pin = getattr(self.engine, "fail_step_requests", None)
        if pin is None:
            return False
        try:
            failed = pin(exc)
        except Exception:  # noqa: BLE001 - isolation failed: fall back to failing everyone
            logger.exception("could not isolate the failed engine step")
            return False
        if not failed:
            return False
        logger.error("engine step failed (%r); failing %d request(s) it belongs to, the "
                     "other %d continue", exc, len(failed), len(self._streams) - len(failed))
        for rid, why in failed.items():
            stream = self._streams.pop(rid, None)
            if stream is None:
                continue
            siblings = [i for i in stream.request_ids if self._streams.get(i) is stream]
            self._apply_abort(siblings)
            deliveries.append((stream, (ERROR, RequestFailedError(
                f"request {rid} failed in the engine: {why}"))))
        return True

    def _deliver(self, deliveries) -> None:
        if not deliveries or self._loop is None:
            return

        def put_all():
            for stream, item in deliveries:
                stream.queue.put_nowait(item)
        try:
            self._loop.call_soon_threadsafe(put_all)
        except RuntimeError:   # the event loop is closed: nobody is waiting anymore
            pass

    # ------------------------------------------------------------------ misc
    def num_in_flight(self) -> int:
        return len(self._streams)
