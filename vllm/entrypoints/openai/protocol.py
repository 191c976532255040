"""OpenAI wire protocol: request parsing/validation, error bodies, small response helpers.

Requests are validated by hand (not by a schema library) so each bad field maps to a 400 with
the field's name in ``param``. Fields of the OpenAI API that this server does not use are
accepted and ignored, as are unknown fields; fields whose meaning it cannot honour (``suffix``,
a non-empty ``logit_bias``, ``best_of`` > n, non-text chat content) get a 400.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from vllm.sampling_params import SamplingParams

MAX_LOGPROBS = 20

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    499: "ClientClosedRequest",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class OpenAIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 type: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.type = type or _ERROR_TYPES.get(status, "Error")

    def body(self) -> dict:
        return error_body(self.message, self.status, self.param, self.type)


def error_body(message: str, status: int = 400, param: Optional[str] = None,
               type: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type or _ERROR_TYPES.get(status, "Error"),
                      "param": param, "code": status}}


def bad_request(message: str, param: Optional[str] = None) -> OpenAIError:
    return OpenAIError(message, 400, param)


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def param_from_error(msg: str, aliases: Optional[dict] = None) -> Optional[str]:
    """SamplingParams raises ValueError("<field> must ..."): the request field it is about."""
    head = msg.split(" ", 1)[0].strip(":,=")
    if not head.isidentifier():
        return None
    if aliases and head in aliases:
        return aliases[head]
    return head


# ---------------------------------------------------------------------------- field readers
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Reader:
    """Typed access to a JSON object's fields; a wrong type is a 400 naming the field.
    ``null`` reads as "not given" (the default)."""

    def __init__(self, body: dict):
        self.body = body

    def _raw(self, name):
        return self.body.get(name)

    def int(self, name: str, default=None, min_value=None, max_value=None):
        v = self._raw(name)
        if v is None:
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not _is_int(v):
            raise bad_request(f"{name} must be an integer, got {type(v).__name__} {v!r}", name)
        if min_value is not None and v < min_value:
            raise bad_request(f"{name} must be >= {min_value}, got {v}", name)
        if max_value is not None and v > max_value:
            raise bad_request(f"{name} must be <= {max_value}, got {v}", name)
        return v

    def num(self, name: str, default=None, min_value=None, max_value=None):
        v = self._raw(name)
        if v is None:
            return default
        if not _is_num(v):
            raise bad_request(f"{name} must be a number, got {type(v).__name__} {v!r}", name)
        if min_value is not None and v < min_value:
            raise bad_request(f"{name} must be >= {min_value}, got {v}", name)
        if max_value is not None and v > max_value:
            raise bad_request(f"{name} must be <= {max_value}, got {v}", name)
        return float(v)

    def bool(self, name: str, default=None):
        v = self._raw(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise bad_request(f"{name} must be a boolean, got {type(v).__name__} {v!r}", name)
        return v

    def str(self, name: str, default=None):
        v = self._raw(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise bad_request(f"{name} must be a string, got {type(v).__name__}", name)
        return v

    def dict(self, name: str, default=None):
        v = self._raw(name)
        if v is None:
            return default
        if not isinstance(v, dict):
            raise bad_request(f"{name} must be an object, got {type(v).__name__}", name)
        return v

    def stop(self, name: str = "stop") -> list[str]:
        v = self._raw(name)
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise bad_request(f"{name} must be a string or a list of strings", name)
        if any(s == "" for s in v):
            raise bad_request(f"{name} must not contain empty strings", name)
        return list(v)

    def int_list(self, name: str) -> list[int]:
        v = self._raw(name)
        if v is None:
            return []
        if not isinstance(v, list) or not all(_is_int(t) and t >= 0 for t in v):
            raise bad_request(f"{name} must be a list of non-negative integers", name)
        return list(v)


@dataclass
class StreamOptions:
    include_usage: bool = False
    continuous_usage_stats: bool = False


@dataclass
class _SamplingFields:
    """Sampling fields shared by /v1/completions and /v1/chat/completions."""
    model: Optional[str] = None
    max_tokens: Optional[int] = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    num_logprobs: Optional[int] = None       # what SamplingParams.logprobs gets
    user: Optional[str] = None

    def _read_common(self, r: _Reader) -> None:
        self.model = r.str("model")
        self.n = r.int("n", 1, min_value=1, max_value=128)
        self.temperature = r.num("temperature", 1.0, min_value=0.0)
        self.top_p = r.num("top_p", 1.0)
        if not 0.0 < self.top_p <= 1.0:
            raise bad_request(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        self.top_k = r.int("top_k", 0, min_value=-1)
        self.min_p = r.num("min_p", 0.0, min_value=0.0, max_value=1.0)
        self.seed = r.int("seed")
        self.stop = r.stop("stop")
        self.stop_token_ids = r.int_list("stop_token_ids")
        self.presence_penalty = r.num("presence_penalty", 0.0, min_value=-2.0, max_value=2.0)
        self.frequency_penalty = r.num("frequency_penalty", 0.0, min_value=-2.0, max_value=2.0)
        self.repetition_penalty = r.num("repetition_penalty", 1.0)
        if self.repetition_penalty <= 0:
            raise bad_request("repetition_penalty must be > 0", "repetition_penalty")
        self.min_tokens = r.int("min_tokens", 0, min_value=0)
        self.ignore_eos = r.bool("ignore_eos", False)
        self.include_stop_str_in_output = r.bool("include_stop_str_in_output", False)
        self.skip_special_tokens = r.bool("skip_special_tokens", True)
        self.stream = r.bool("stream", False)
        so = r.dict("stream_options")
        if so is not None:
            if not self.stream:
                raise bad_request("stream_options can only be given when stream is true",
                                  "stream_options")
            sr = _Reader(so)
            self.stream_options = StreamOptions(
                include_usage=bool(sr.bool("include_usage", False)),
                continuous_usage_stats=bool(sr.bool("continuous_usage_stats", False)))
        self.user = r.str("user")
        lb = r.dict("logit_bias")
        if lb:
            raise bad_request("logit_bias is not supported", "logit_bias")
        best_of = r.int("best_of")
        if best_of is not None and best_of != self.n:
            raise bad_request("best_of != n is not supported", "best_of")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage
                    and self.stream_options.continuous_usage_stats)

    def resolve_max_tokens(self, prompt_len: int, max_model_len: int, default: Optional[int],
                           prompt_param: str) -> int:
        """The request's max_tokens, checked against the context window."""
        if prompt_len >= max_model_len:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens, but the "
                f"prompt has {prompt_len} tokens (no room to generate). Please reduce the "
                f"length of the prompt.", prompt_param)
        room = max_model_len - prompt_len
        if self.max_tokens is None:
            return room if default is None else min(default, room)
        if self.max_tokens > room:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {prompt_len + self.max_tokens} tokens ({prompt_len} in the prompt, "
                f"{self.max_tokens} in the completion). Please reduce the length of the prompt "
                f"or completion.", "max_tokens")
        return self.max_tokens

    def to_sampling_params(self, max_tokens: int, aliases: Optional[dict] = None
                           ) -> SamplingParams:
        try:
            return SamplingParams(
                n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                min_p=self.min_p, seed=self.seed, stop=list(self.stop),
                stop_token_ids=list(self.stop_token_ids),
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                repetition_penalty=self.repetition_penalty, max_tokens=max_tokens,
                min_tokens=min(self.min_tokens, max_tokens), ignore_eos=self.ignore_eos,
                logprobs=self.num_logprobs,
                include_stop_str_in_output=self.include_stop_str_in_output,
                skip_special_tokens=self.skip_special_tokens)
        except ValueError as e:
            raise bad_request(str(e), param_from_error(str(e), aliases)) from None


PromptInput = Union[str, list[int]]


@dataclass
class CompletionRequest(_SamplingFields):
    prompts: list[PromptInput] = field(default_factory=list)
    echo: bool = False
    add_special_tokens: bool = True

    @classmethod
    def parse(cls, body: Any) -> "CompletionRequest":
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        r = _Reader(body)
        req = cls()
        req._read_common(r)
        req.max_tokens = r.int("max_tokens", None, min_value=1)
        lp = r.int("logprobs", None, min_value=0, max_value=MAX_LOGPROBS)
        req.num_logprobs = lp
        req.echo = r.bool("echo", False)
        req.add_special_tokens = r.bool("add_special_tokens", True)
        if body.get("suffix") not in (None, ""):
            raise bad_request("suffix is not supported", "suffix")
        if req.echo and lp is not None:
            raise bad_request("echo together with logprobs is not supported", "echo")
        req.prompts = _parse_prompt(body.get("prompt"))
        return req


def _parse_prompt(p: Any) -> list[PromptInput]:
    if p is None:
        raise bad_request("prompt is required", "prompt")
    if isinstance(p, str):
        prompts: list = [p]
    elif isinstance(p, list) and p and all(_is_int(t) for t in p):
        prompts = [list(p)]
    elif isinstance(p, list) and p and all(
            isinstance(x, str) or (isinstance(x, list) and all(_is_int(t) for t in x))
            for x in p):
        prompts = [x if isinstance(x, str) else list(x) for x in p]
    else:
        raise bad_request("prompt must be a string, a list of strings, a list of token ids or a "
                          "list of lists of token ids", "prompt")
    for x in prompts:
        if len(x) == 0:
            raise bad_request("prompt must not be empty", "prompt")
        if isinstance(x, list) and any(t < 0 for t in x):
            raise bad_request("prompt token ids must be non-negative", "prompt")
    return prompts


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclass
class ChatCompletionRequest(_SamplingFields):
    messages: list[dict] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: Optional[str] = None
    chat_template_kwargs: dict = field(default_factory=dict)
    tools: Optional[list] = None

    # SamplingParams' logprobs is the chat request's top_logprobs.
    PARAM_ALIASES = {"logprobs": "top_logprobs"}

    @classmethod
    def parse(cls, body: Any) -> "ChatCompletionRequest":
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        r = _Reader(body)
        req = cls()
        req._read_common(r)
        mct = r.int("max_completion_tokens", None, min_value=1)
        mt = r.int("max_tokens", None, min_value=1)
        req.max_tokens = mct if mct is not None else mt
        req.logprobs = r.bool("logprobs", False)
        req.top_logprobs = r.int("top_logprobs", None, min_value=0, max_value=MAX_LOGPROBS)
        if req.top_logprobs and not req.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
        req.num_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        req.add_generation_prompt = r.bool("add_generation_prompt", True)
        req.continue_final_message = r.bool("continue_final_message", False)
        if req.add_generation_prompt and req.continue_final_message and \
                body.get("add_generation_prompt") is True:
            raise bad_request("add_generation_prompt and continue_final_message cannot both "
                              "be true", "continue_final_message")
        if req.continue_final_message:
            req.add_generation_prompt = False
        req.add_special_tokens = r.bool("add_special_tokens", False)
        req.chat_template = r.str("chat_template")
        req.chat_template_kwargs = r.dict("chat_template_kwargs", {}) or {}
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise bad_request("tools must be a list", "tools")
        req.tools = tools or None
        req.messages = _parse_messages(body.get("messages"))
        return req


def _parse_messages(msgs: Any) -> list[dict]:
    if msgs is None:
        raise bad_request("messages is required", "messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(_ROLES)}",
                              "messages")
        content = m.get("content")
        if content is None:
            text = None
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, str):
                    parts.append(part)
                elif isinstance(part, dict) and part.get("type") == "text" \
                        and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                else:
                    raise bad_request(f"messages[{i}].content: only text parts are supported",
                                      "messages")
            text = "\n".join(parts)
        else:
            raise bad_request(f"messages[{i}].content must be a string or a list of parts",
                              "messages")
        msg = dict(m)
        msg["content"] = text if text is not None else ""
        out.append(msg)
    return out


def usage_dict(prompt_tokens: int, completion_tokens: int, cached: int = 0) -> dict:
    u = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
         "total_tokens": prompt_tokens + completion_tokens}
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u
