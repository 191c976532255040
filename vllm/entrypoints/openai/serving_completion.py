"""POST /v1/completions, plus what the chat endpoint shares with it: the serving base class
(model check, tokenization, collecting a request's outputs, delta tracking) and the SSE
response that aborts its request when the client goes away."""
from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
from typing import Any, AsyncIterator, Callable, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from vllm.entrypoints.openai.async_engine import (ERROR, AsyncEngine, EngineDeadError,
                                                  RequestStream)
from vllm.entrypoints.openai.protocol import (CompletionRequest, Limits, OpenAIError,
                                              bad_request, error_body, now, random_id, short,
                                              usage_dict)
from vllm.logger import init_logger
from vllm.outputs import CompletionOutput, RequestOutput

logger = init_logger(__name__)


class ClientDisconnected(Exception):
    pass


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class SSEResponse(Response):
    """text/event-stream from an async iterator of bytes.

    Independently of the ASGI spec version the server speaks, it listens for the client's
    disconnect while streaming; on disconnect (or cancellation) it stops the iterator and calls
    ``on_close`` (which aborts the engine requests, freeing their KV blocks)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None]):
        # Not Response.__init__: it would declare "Content-Length: 0" for the missing body.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.body_iterator = body
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump():
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch():
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return

        pump_t = asyncio.ensure_future(pump())
        watch_t = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({pump_t, watch_t}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump_t, watch_t):
                if not t.done():
                    t.cancel()
            await asyncio.gather(pump_t, watch_t, return_exceptions=True)
            try:
                self.on_close()
            finally:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # noqa: BLE001
                        pass
        if pump_t.done() and not pump_t.cancelled() and pump_t.exception() is not None:
            exc = pump_t.exception()
            if not isinstance(exc, OSError):
                logger.error("streaming response failed: %r", exc)


# Texts up to this many characters are tokenized on the event loop (microseconds); longer ones
# in the tokenizer thread, so a huge prompt never stalls other requests or /health.
INLINE_TOKENIZE_CHARS = 4096


class ServingBase:
    def __init__(self, engine: AsyncEngine, model_name: str, tokenizer, max_model_len: int,
                 limits: Limits = Limits()):
        self.engine = engine
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.limits = limits
        # One thread: a fast tokenizer must not be used by two threads at once.
        self._tok_pool = concurrent.futures.ThreadPoolExecutor(1, "tokenizer")
        self._max_token_chars: Optional[int] = None
        # A private copy for the event loop thread: the engine thread decodes with the original.
        self.tokenizer = tokenizer
        if tokenizer is not None:
            try:
                self.tokenizer = copy.deepcopy(tokenizer)
            except Exception:  # noqa: BLE001 - fall back to sharing (read-only use)
                self.tokenizer = tokenizer
        self._token_str_cache: dict[int, str] = {}

    # ------------------------------------------------------------------ checks
    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_name:
            raise OpenAIError(f"The model {short(model)} does not exist; this server serves "
                              f"`{self.model_name}`.", 404, "model",
                              type="invalid_request_error", code="model_not_found")

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer: send token ids as the prompt",
                              "prompt")
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def max_prompt_chars(self) -> int:
        """A text longer than this has more than max_model_len tokens whatever it says: no
        token is longer than the vocabulary's longest entry."""
        if self._max_token_chars is None:
            longest = 16
            try:
                longest = max((len(t) for t in self.tokenizer.get_vocab()), default=16)
            except Exception:  # noqa: BLE001 - no vocabulary listing: a generous guess
                longest = 64
            self._max_token_chars = max(longest, 1)
        return self._max_token_chars * (self.max_model_len + 8)

    async def tokenize_async(self, text: str, add_special_tokens: bool, param: str
                             ) -> list[int]:
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer: send token ids as the prompt",
                              param)
        if len(text) > self.max_prompt_chars():
            raise bad_request(f"This model's maximum context length is {self.max_model_len} "
                              f"tokens, and the prompt ({len(text)} characters) is longer than "
                              f"that. Please reduce the length of the prompt.", param)
        if len(text) <= INLINE_TOKENIZE_CHARS:
            return self.tokenize(text, add_special_tokens)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tok_pool, self.tokenize, text,
                                          add_special_tokens)

    async def decode_async(self, ids: list[int]) -> str:
        if len(ids) <= INLINE_TOKENIZE_CHARS // 4:
            return self.decode(ids)
        return await asyncio.get_running_loop().run_in_executor(self._tok_pool, self.decode,
                                                                ids)

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids)

    def token_str(self, tid: int) -> str:
        s = self._token_str_cache.get(tid)
        if s is None:
            s = self.decode([tid]) if self.tokenizer is not None else f"token_id:{tid}"
            if len(self._token_str_cache) < 200_000:
                self._token_str_cache[tid] = s
        return s

    def submit(self, requests) -> RequestStream:
        try:
            return self.engine.add_requests(requests)
        except EngineDeadError as e:
            raise OpenAIError(str(e), 503) from None

    async def wait_added(self, stream: RequestStream, param: str) -> None:
        try:
            await stream.wait_added()
        except ValueError as e:
            raise bad_request(str(e), param) from None
        except EngineDeadError as e:
            raise OpenAIError(str(e), 503) from None
        except BaseException:
            stream.abort()
            raise

    async def collect(self, stream: RequestStream, raw: Request) -> dict[str, RequestOutput]:
        """Wait for every request of the stream to finish (non-streaming responses). A client
        that disconnects meanwhile aborts them."""
        async def watch():
            while True:
                msg = await raw.receive()
                if msg["type"] == "http.disconnect":
                    stream.abort()
                    stream.queue.put_nowait((ERROR, ClientDisconnected()))
                    return

        watcher = asyncio.ensure_future(watch())
        finals: dict[str, RequestOutput] = {}
        try:
            while not stream.finished:
                out = await stream.next_output()
                if out.finished:
                    finals[out.request_id] = out
        except EngineDeadError as e:
            raise OpenAIError(str(e), 503) from None
        except RuntimeError as e:
            raise OpenAIError(str(e), 500) from None
        except ClientDisconnected:
            # Nobody reads the answer; the requests were aborted (blocks freed).
            raise OpenAIError("client disconnected", 499) from None
        finally:
            watcher.cancel()
            stream.abort()
        return finals

    # ------------------------------------------------------------------ responses
    @staticmethod
    def error_response(e: OpenAIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @staticmethod
    def stream_error_event(e: BaseException) -> bytes:
        status = 503 if isinstance(e, EngineDeadError) else 500
        return sse(error_body(str(e), status))


class DeltaTracker:
    """Per choice: how much text / how many tokens were already streamed.

    With stop strings, the last (longest stop - 1) characters are held back until the request
    finishes: the engine truncates its text when a stop string completes, and streamed text
    must never include what is later cut."""

    def __init__(self, num_choices: int, stop: list[str]):
        self.text_len = [0] * num_choices
        self.num_tokens = [0] * num_choices
        self.finished = [False] * num_choices
        self.holdback = max((len(s) for s in stop), default=1) - 1

    def delta(self, idx: int, comp: CompletionOutput) -> tuple[str, int, int]:
        """(new text, first new token index, end token index)."""
        text = comp.text
        end = len(text) if comp.finished() else max(self.text_len[idx],
                                                     len(text) - self.holdback)
        new_text = text[self.text_len[idx]:end]
        self.text_len[idx] = max(self.text_len[idx], end)
        t0, t1 = self.num_tokens[idx], len(comp.token_ids)
        self.num_tokens[idx] = t1
        if comp.finished():
            self.finished[idx] = True
        return new_text, t0, t1


class OpenAIServingCompletion(ServingBase):
    async def create(self, body: Any, raw: Request) -> Response:
        try:
            req = CompletionRequest.parse(body, self.limits)
            self.check_model(req.model)
            prepared = []       # (prompt text or None, prompt ids)
            for p in req.prompts:
                if isinstance(p, str):
                    prepared.append((p, await self.tokenize_async(p, req.add_special_tokens,
                                                                  "prompt")))
                else:
                    # echo shows the prompt's text: decode it now, off the event loop.
                    prepared.append((await self.decode_async(p) if req.echo else None, p))
            params = []
            for _, ids in prepared:
                mt = req.resolve_max_tokens(len(ids), self.max_model_len, 16, "prompt")
                params.append(req.to_sampling_params(mt))
            base_id = random_id("cmpl")
            rids = [base_id if len(prepared) == 1 else f"{base_id}-{i}"
                    for i in range(len(prepared))]
            engine_reqs = [(rid, {"prompt": text, "prompt_token_ids": ids}, sp)
                           for rid, (text, ids), sp in zip(rids, prepared, params)]
            stream = self.submit(engine_reqs)
            await self.wait_added(stream, "prompt")
        except OpenAIError as e:
            return self.error_response(e)
        created = now()
        if req.stream:
            return SSEResponse(self._stream(req, base_id, created, rids, prepared, stream),
                               stream.abort)
        try:
            finals = await self.collect(stream, raw)
        except OpenAIError as e:
            return self.error_response(e)
        return JSONResponse(self._full_response(req, base_id, created, rids, prepared, finals))

    # ------------------------------------------------------------------ helpers
    def _prompt_text(self, text: Optional[str], ids: list[int]) -> str:
        return text if text is not None else self.decode(ids)

    def _logprobs(self, comp: CompletionOutput, t0: int, t1: int, offset: int) -> dict:
        tokens, token_lps, tops, offsets = [], [], [], []
        for j in range(t0, t1):
            tid = comp.token_ids[j]
            d = comp.logprobs[j] if comp.logprobs is not None and j < len(comp.logprobs) else {}
            s = self.token_str(tid)
            tokens.append(s)
            token_lps.append(d.get(tid))
            tops.append({self.token_str(k): v
                         for k, v in sorted(d.items(), key=lambda kv: -kv[1])})
            offsets.append(offset)
            offset += len(s)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
                "text_offset": offsets}

    def _full_response(self, req: CompletionRequest, base_id, created, rids, prepared,
                       finals) -> dict:
        choices = []
        prompt_tokens = completion_tokens = cached = 0
        for i, (rid, (text, ids)) in enumerate(zip(rids, prepared)):
            out = finals[rid]
            prompt_tokens += len(ids)
            cached += out.num_cached_tokens
            prefix = self._prompt_text(text, ids) if req.echo else ""
            for comp in out.outputs:
                completion_tokens += len(comp.token_ids)
                lp = (self._logprobs(comp, 0, len(comp.token_ids), len(prefix))
                      if req.num_logprobs is not None else None)
                choices.append({"index": i * req.n + comp.index, "text": prefix + comp.text,
                                "logprobs": lp, "finish_reason": comp.finish_reason,
                                "stop_reason": comp.stop_reason})
        return {"id": base_id, "object": "text_completion", "created": created,
                "model": self.model_name, "choices": choices,
                "usage": usage_dict(prompt_tokens, completion_tokens, cached)}

    async def _stream(self, req: CompletionRequest, base_id, created, rids, prepared,
                      stream: RequestStream) -> AsyncIterator[bytes]:
        n = req.n
        index_of = {rid: i for i, rid in enumerate(rids)}
        tracker = DeltaTracker(len(rids) * n, req.stop)
        echo_pending = [req.echo] * (len(rids) * n)
        offsets = [0] * (len(rids) * n)
        prompt_tokens = sum(len(ids) for _, ids in prepared)
        completion_tokens = 0

        def chunk(choices, usage=None):
            obj = {"id": base_id, "object": "text_completion", "created": created,
                   "model": self.model_name, "choices": choices}
            if usage is not None:
                obj["usage"] = usage
            return sse(obj)

        try:
            while not stream.finished:
                out = await stream.next_output()
                i = index_of[out.request_id]
                for comp in out.outputs:
                    idx = i * n + comp.index
                    if tracker.finished[idx]:
                        continue
                    text, t0, t1 = tracker.delta(idx, comp)
                    completion_tokens += t1 - t0
                    if echo_pending[idx]:
                        echo_pending[idx] = False
                        ptext, pids = prepared[i]
                        text = self._prompt_text(ptext, pids) + text
                    if not text and comp.finish_reason is None and (
                            req.num_logprobs is None or t1 == t0):
                        continue
                    lp = None
                    if req.num_logprobs is not None:
                        lp = self._logprobs(comp, t0, t1, offsets[idx])
                    offsets[idx] += len(text)
                    usage = (usage_dict(prompt_tokens, completion_tokens)
                             if req.continuous_usage else None)
                    yield chunk([{"index": idx, "text": text, "logprobs": lp,
                                  "finish_reason": comp.finish_reason,
                                  "stop_reason": comp.stop_reason}], usage)
            if req.include_usage:
                yield chunk([], usage_dict(prompt_tokens, completion_tokens))
        except (EngineDeadError, RuntimeError) as e:
            yield self.stream_error_event(e)
        yield SSE_DONE
