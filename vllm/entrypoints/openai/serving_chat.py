"""POST /v1/chat/completions: messages -> chat template -> prompt tokens -> the engine."""
from __future__ import annotations

import os
from typing import Any, AsyncIterator, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllm.entrypoints.openai import chat_template as ct
from vllm.entrypoints.openai.async_engine import EngineDeadError, RequestStream
from vllm.entrypoints.openai.protocol import (ChatCompletionRequest, Limits, OpenAIError,
                                              bad_request, now, random_id, usage_dict)
from vllm.entrypoints.openai.serving_completion import (SSE_DONE, DeltaTracker, ServingBase,
                                                        SSEResponse, sse)
from vllm.logger import init_logger
from vllm.outputs import CompletionOutput

logger = init_logger(__name__)

# Used when neither --chat-template nor the tokenizer (or GGUF) provides a template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def load_chat_template(value: Optional[str]) -> Optional[str]:
    """--chat-template: a file path or the template text itself."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" not in value and ("/" in value or value.endswith((".jinja", ".j2"))):
        raise ValueError(f"--chat-template {value!r}: no such file")
    return value


def _tokenizer_template(tokenizer) -> Optional[str]:
    t = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(t, dict):      # named templates: the default one
        t = t.get("default") or next(iter(t.values()), None)
    elif isinstance(t, list):    # [{"name", "template"}]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) and t else None


class OpenAIServingChat(ServingBase):
    def __init__(self, engine, model_name, tokenizer, max_model_len,
                 chat_template: Optional[str] = None, response_role: str = "assistant",
                 limits: Limits = Limits(), trust_request_chat_template: bool = False,
                 template_timeout: float = ct.DEFAULT_TIMEOUT_S):
        super().__init__(engine, model_name, tokenizer, max_model_len, limits)
        self.response_role = response_role
        self.trust_request_chat_template = trust_request_chat_template
        self.template_timeout = template_timeout
        self.chat_template = chat_template or _tokenizer_template(tokenizer)
        if self.chat_template is None and tokenizer is not None:
            logger.warning("The tokenizer has no chat template and no --chat-template was given;"
                           " /v1/chat/completions uses a plain 'role: content' template.")
            self.chat_template = DEFAULT_CHAT_TEMPLATE

    async def render(self, req: ChatCompletionRequest) -> str:
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer: chat completions are unavailable",
                              "messages")
        template = self.chat_template
        if req.chat_template is not None:
            if not self.trust_request_chat_template:
                raise bad_request("chat_template in the request is refused: this server renders "
                                  "only its own template (start it with "
                                  "--trust-request-chat-template to allow request templates)",
                                  "chat_template")
            template = req.chat_template
        kwargs = dict(req.chat_template_kwargs)
        for k in ("tokenize", "conversation", "messages", "chat_template", "tools",
                  "add_generation_prompt"):
            kwargs.pop(k, None)
        variables = ct.template_variables(self.tokenizer, req.messages, req.tools,
                                          req.add_generation_prompt, kwargs)
        # Rendered text longer than this cannot fit the context window anyway.
        max_chars = min(ct.DEFAULT_MAX_CHARS, self.max_prompt_chars())
        try:
            text = await ct.render(template, variables, timeout=self.template_timeout,
                                   max_chars=max_chars)
        except ct.ChatTemplateError as e:
            raise bad_request(str(e), "chat_template" if req.chat_template is not None
                              else "messages") from None
        if req.continue_final_message:
            text = ct.continue_final(text, req.messages)
        return text

    async def create(self, body: Any, raw: Request) -> Response:
        try:
            req = ChatCompletionRequest.parse(body, self.limits)
            self.check_model(req.model)
            prompt = await self.render(req)
            ids = await self.tokenize_async(prompt, req.add_special_tokens, "messages")
            if not ids:
                raise bad_request("the rendered chat prompt is empty", "messages")
            mt = req.resolve_max_tokens(len(ids), self.max_model_len, None, "messages")
            params = req.to_sampling_params(mt, ChatCompletionRequest.PARAM_ALIASES)
            rid = random_id("chatcmpl")
            stream = self.submit([(rid, {"prompt": prompt, "prompt_token_ids": ids}, params)])
            await self.wait_added(stream, "messages")
        except OpenAIError as e:
            return self.error_response(e)
        created = now()
        if req.stream:
            return SSEResponse(self._stream(req, rid, created, len(ids), stream), stream.abort)
        try:
            finals = await self.collect(stream, raw)
        except OpenAIError as e:
            return self.error_response(e)
        out = finals[rid]
        choices = []
        completion_tokens = 0
        for comp in out.outputs:
            completion_tokens += len(comp.token_ids)
            lp = (self._logprobs(comp, 0, len(comp.token_ids), req)
                  if req.logprobs else None)
            choices.append({"index": comp.index,
                            "message": {"role": self.response_role, "content": comp.text,
                                        "tool_calls": []},
                            "logprobs": lp, "finish_reason": comp.finish_reason,
                            "stop_reason": comp.stop_reason})
        return JSONResponse({"id": rid, "object": "chat.completion", "created": created,
                             "model": self.model_name, "choices": choices,
                             "usage": usage_dict(len(ids), completion_tokens,
                                                 out.num_cached_tokens)})

    def _entry(self, tid: int, lp: Optional[float]) -> dict:
        s = self.token_str(tid)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    def _logprobs(self, comp: CompletionOutput, t0: int, t1: int,
                  req: ChatCompletionRequest) -> dict:
        k = req.top_logprobs or 0
        content = []
        for j in range(t0, t1):
            tid = comp.token_ids[j]
            d = comp.logprobs[j] if comp.logprobs is not None and j < len(comp.logprobs) else {}
            top = sorted(d.items(), key=lambda kv: -kv[1])[:k]
            e = self._entry(tid, d.get(tid))
            e["top_logprobs"] = [self._entry(t, v) for t, v in top]
            content.append(e)
        return {"content": content}

    async def _stream(self, req: ChatCompletionRequest, rid: str, created: int,
                      prompt_tokens: int, stream: RequestStream) -> AsyncIterator[bytes]:
        n = req.n
        tracker = DeltaTracker(n, req.stop)
        completion_tokens = 0

        def chunk(choices, usage=None):
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created,
                   "model": self.model_name, "choices": choices}
            if usage is not None:
                obj["usage"] = usage
            return sse(obj)

        try:
            first = [{"index": i, "delta": {"role": self.response_role, "content": ""},
                      "logprobs": None, "finish_reason": None} for i in range(n)]
            yield chunk(first, usage_dict(prompt_tokens, 0) if req.continuous_usage else None)
            while not stream.finished:
                out = await stream.next_output()
                for comp in out.outputs:
                    idx = comp.index
                    if tracker.finished[idx]:
                        continue
                    text, t0, t1 = tracker.delta(idx, comp)
                    completion_tokens += t1 - t0
                    if not text and comp.finish_reason is None and (
                            not req.logprobs or t1 == t0):
                        continue
                    delta = {"content": text} if text else {}
                    lp = self._logprobs(comp, t0, t1, req) if req.logprobs else None
                    usage = (usage_dict(prompt_tokens, completion_tokens)
                             if req.continuous_usage else None)
                    yield chunk([{"index": idx, "delta": delta, "logprobs": lp,
                                  "finish_reason": comp.finish_reason,
                                  "stop_reason": comp.stop_reason}], usage)
            if req.include_usage:
                yield chunk([], usage_dict(prompt_tokens, completion_tokens))
        except (EngineDeadError, RuntimeError) as e:
            yield self.stream_error_event(e)
        yield SSE_DONE
