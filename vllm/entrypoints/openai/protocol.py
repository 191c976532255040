"""OpenAI wire protocol: request parsing/validation, error bodies, small response helpers.

Requests are validated by hand (not by a schema library) so each bad field maps to a 400 with
the field's name in ``param``. Fields of the OpenAI API that this server does not use are
accepted and ignored, as are unknown fields; fields whose meaning it cannot honour (``suffix``,
a non-empty ``logit_bias``, ``best_of`` > n, non-text chat content) get a 400.
"""
from __future__ import annotations

import copy
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from vllm.sampling_params import MAX_STOP_STRINGS, SamplingParams

MAX_LOGPROBS = 20

_ERROR_TYPES = {
    400: "BadRequestError",
    408: "RequestTimeoutError",
    415: "UnsupportedMediaTypeError",
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
                 type: Optional[str] = None, code: Union[int, str, None] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.type = type or _ERROR_TYPES.get(status, "Error")
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.status, self.param, self.type, self.code)


def error_body(message: str, status: int = 400, param: Optional[str] = None,
               type: Optional[str] = None, code: Union[int, str, None] = None) -> dict:
    """OpenAI's error object; ``code`` is the HTTP status unless a specific one (as OpenAI's
    "model_not_found") is given."""
    return {"error": {"message": _printable(message),
                      "type": type or _ERROR_TYPES.get(status, "Error"),
                      "param": None if param is None else _printable(param),
                      "code": status if code is None else code}}


def _printable(s: str) -> str:
    """Text that can be encoded as UTF-8: an error about a lone surrogate must not carry it
    (the response itself would fail to encode)."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


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


# ---------------------------------------------------------------------------- the schema
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_JSON_DEPTH = 32          # OpenAI bodies nest 5 deep at most (tools' JSON schemas a bit more)
MAX_STOP_TOKEN_IDS = 1024


@dataclass(frozen=True)
class Limits:
    """What the edge checks requests against: the model's and the server's sizes."""
    vocab_size: int = (1 << 31) - 1
    max_model_len: int = 1 << 20
    max_n: int = 128                 # choices per prompt
    max_seqs_per_request: int = 256  # n x prompts (--max-num-seqs)
    max_log_len: Optional[int] = None


def short(v: Any, limit: int = 64) -> str:
    """repr() for error messages, cut: a request's own huge value is not echoed back."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + f"...({len(r)} chars)"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


Bound = Union[None, int, float, Callable[[Limits], Union[int, float]]]


@dataclass(frozen=True)
class F:
    """One request field: its JSON kind, default and bounds (numbers, or functions of the
    Limits). ``null`` reads as "not given". A violation is a 400 naming the field.

    kinds: int, num (finite number), bool, str, obj (JSON object), stop (a string or a list
    of non-empty strings), ids (a list of token ids in [0, vocab), at most ``hi`` of them).
    """
    name: str
    kind: str
    default: Any = None
    lo: Bound = None
    hi: Bound = None
    lo_open: bool = False

    def bound(self, b: Bound, limits: Limits):
        return b(limits) if callable(b) else b

    def read(self, body: dict, limits: Limits):
        v = body.get(self.name)
        if v is None:
            return copy.copy(self.default)
        name = self.name
        lo, hi = self.bound(self.lo, limits), self.bound(self.hi, limits)
        if self.kind == "int":
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not _is_int(v):
                raise bad_request(f"{name} must be an integer, got {type(v).__name__} "
                                  f"{short(v)}", name)
        elif self.kind == "num":
            if not _is_num(v) or not math.isfinite(v):
                raise bad_request(f"{name} must be a finite number, got {type(v).__name__} "
                                  f"{short(v)}", name)
            v = float(v)
        elif self.kind == "bool":
            if not isinstance(v, bool):
                raise bad_request(f"{name} must be a boolean, got {type(v).__name__} "
                                  f"{short(v)}", name)
            return v
        elif self.kind == "str":
            if not isinstance(v, str):
                raise bad_request(f"{name} must be a string, got {type(v).__name__}", name)
            return v
        elif self.kind == "obj":
            if not isinstance(v, dict):
                raise bad_request(f"{name} must be an object, got {type(v).__name__}", name)
            return v
        elif self.kind == "stop":
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise bad_request(f"{name} must be a string or a list of strings", name)
            if any(x == "" for x in v):
                raise bad_request(f"{name} must not contain empty strings", name)
            if len(v) > MAX_STOP_STRINGS:
                raise bad_request(f"{name} must have at most {MAX_STOP_STRINGS} strings", name)
            return list(v)
        elif self.kind == "ids":
            return check_token_ids(v, name, limits.vocab_size, hi)
        else:
            raise AssertionError(self.kind)
        if lo is not None and (v <= lo if self.lo_open else v < lo):
            raise bad_request(f"{name} must be {'>' if self.lo_open else '>='} {lo}, got {v}",
                              name)
        if hi is not None and v > hi:
            raise bad_request(f"{name} must be <= {hi}, got {v}", name)
        return v


def check_token_ids(v: Any, name: str, vocab_size: int, max_len: Optional[int] = None
                    ) -> list[int]:
    if not isinstance(v, list) or not all(_is_int(t) for t in v):
        raise bad_request(f"{name} must be a list of integers (token ids)", name)
    if max_len is not None and len(v) > max_len:
        raise bad_request(f"{name} must have at most {max_len} token ids, got {len(v)}", name)
    bad = next((t for t in v if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise bad_request(f"{name} must hold token ids in [0, {vocab_size}) (the model's "
                          f"vocabulary), got {short(bad)}", name)
    return list(v)


def read_fields(obj: Any, fields: tuple[F, ...], limits: Limits) -> None:
    """Set obj.<name> for each field of the schema, read from obj.body."""
    for f in fields:
        setattr(obj, f.name, f.read(obj.body, limits))


# The endpoints' schemas (fields either endpoint accepts; unknown fields are ignored).
COMMON_FIELDS: tuple[F, ...] = (
    F("model", "str"),
    F("n", "int", 1, 1, lambda lim: lim.max_n),
    F("best_of", "int", None, 1, lambda lim: lim.max_n),
    F("temperature", "num", 1.0, 0.0, 100.0),
    F("top_p", "num", 1.0, 0.0, 1.0, lo_open=True),
    F("top_k", "int", 0, -1, lambda lim: lim.vocab_size),
    F("min_p", "num", 0.0, 0.0, 1.0),
    F("seed", "int", None, INT64_MIN, INT64_MAX),
    F("stop", "stop", []),
    F("stop_token_ids", "ids", [], hi=MAX_STOP_TOKEN_IDS),
    F("presence_penalty", "num", 0.0, -2.0, 2.0),
    F("frequency_penalty", "num", 0.0, -2.0, 2.0),
    F("repetition_penalty", "num", 1.0, 0.01, 100.0),
    F("min_tokens", "int", 0, 0, lambda lim: lim.max_model_len),
    F("ignore_eos", "bool", False),
    F("include_stop_str_in_output", "bool", False),
    F("skip_special_tokens", "bool", True),
    F("stream", "bool", False),
    F("stream_options", "obj"),
    F("user", "str"),
    F("logit_bias", "obj"),
)
COMPLETION_FIELDS: tuple[F, ...] = COMMON_FIELDS + (
    F("max_tokens", "int", None, 1, INT64_MAX),
    F("logprobs", "int", None, 0, MAX_LOGPROBS),
    F("echo", "bool", False),
    F("add_special_tokens", "bool", True),
    F("suffix", "str"),
)
CHAT_FIELDS: tuple[F, ...] = COMMON_FIELDS + (
    F("max_tokens", "int", None, 1, INT64_MAX),
    F("max_completion_tokens", "int", None, 1, INT64_MAX),
    F("logprobs", "bool", False),
    F("top_logprobs", "int", None, 0, MAX_LOGPROBS),
    F("add_generation_prompt", "bool", True),
    F("continue_final_message", "bool", False),
    F("add_special_tokens", "bool", False),
    F("chat_template", "str"),
    F("chat_template_kwargs", "obj", {}),
)


def check_json_tree(obj: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Every string (keys too) must be valid Unicode text (no lone surrogates: JSON's
    ``\\ud800`` escapes decode to them and cannot be encoded again), and nesting is bounded.
    Iterative: a deep body cannot exhaust the stack. The 400 names the top-level field."""
    stack = [(obj, 0, None)]
    while stack:
        v, depth, top = stack.pop()
        if depth > max_depth:
            raise bad_request(f"the JSON body nests deeper than {max_depth} levels", top)
        if isinstance(v, str):
            _check_text(v, top)
        elif isinstance(v, dict):
            for k, x in v.items():
                name = k if top is None else top
                _check_text(k, name if top is not None else None)
                stack.append((x, depth + 1, name))
        elif isinstance(v, list):
            stack.extend((x, depth + 1, top) for x in v)


def _check_text(s: str, param: Optional[str]) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{param or 'the body'} must be valid UTF-8 text: {e.reason} at "
                          f"character {e.start}", param if param and param.isidentifier()
                          else None) from None


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
    stream_options: Any = None               # the JSON object, then a StreamOptions
    num_logprobs: Optional[int] = None       # what SamplingParams.logprobs gets
    user: Optional[str] = None
    best_of: Optional[int] = None
    logit_bias: Optional[dict] = None
    body: dict = field(default_factory=dict)

    def _check_common(self, body: dict, limits: Limits) -> None:
        """Cross-field rules (each field's own bounds are the schema's)."""
        if self.stream_options is not None:
            if not self.stream:
                raise bad_request("stream_options can only be given when stream is true",
                                  "stream_options")
            so = self.stream_options
            for k in ("include_usage", "continuous_usage_stats"):
                if so.get(k) is not None and not isinstance(so.get(k), bool):
                    raise bad_request(f"stream_options.{k} must be a boolean", "stream_options")
            self.stream_options = StreamOptions(
                include_usage=bool(so.get("include_usage")),
                continuous_usage_stats=bool(so.get("continuous_usage_stats")))
        if self.logit_bias:
            raise bad_request("logit_bias is not supported", "logit_bias")
        if self.best_of is not None and self.best_of != self.n:
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

    suffix: Optional[str] = None
    logprobs: Optional[int] = None

    @classmethod
    def parse(cls, body: Any, limits: Limits = Limits()) -> "CompletionRequest":
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        req = cls(body=body)
        read_fields(req, COMPLETION_FIELDS, limits)
        req._check_common(body, limits)
        req.num_logprobs = req.logprobs
        if req.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if req.echo and req.logprobs is not None:
            raise bad_request("echo together with logprobs is not supported", "echo")
        req.prompts = _parse_prompt(body.get("prompt"), limits)
        total = len(req.prompts) * req.n
        if total > limits.max_seqs_per_request:
            raise bad_request(f"this request asks for {total} sequences ({len(req.prompts)} "
                              f"prompt(s) x n={req.n}); the server allows at most "
                              f"{limits.max_seqs_per_request} per request", "n")
        return req


def _parse_prompt(p: Any, limits: Limits = Limits()) -> list[PromptInput]:
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
    if len(prompts) > limits.max_seqs_per_request:
        raise bad_request(f"prompt must hold at most {limits.max_seqs_per_request} prompts "
                          f"(--max-num-seqs), got {len(prompts)}", "prompt")
    for x in prompts:
        if len(x) == 0:
            raise bad_request("prompt must not be empty", "prompt")
        if isinstance(x, list):
            check_token_ids(x, "prompt", limits.vocab_size)
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

    max_completion_tokens: Optional[int] = None

    @classmethod
    def parse(cls, body: Any, limits: Limits = Limits()) -> "ChatCompletionRequest":
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        req = cls(body=body)
        read_fields(req, CHAT_FIELDS, limits)
        req._check_common(body, limits)
        if req.max_completion_tokens is not None:
            req.max_tokens = req.max_completion_tokens
        if req.top_logprobs and not req.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
        req.num_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.add_generation_prompt and req.continue_final_message and \
                body.get("add_generation_prompt") is True:
            raise bad_request("add_generation_prompt and continue_final_message cannot both "
                              "be true", "continue_final_message")
        if req.continue_final_message:
            req.add_generation_prompt = False
        if req.n > limits.max_seqs_per_request:
            raise bad_request(f"n={req.n} is more than the server allows per request "
                              f"({limits.max_seqs_per_request}, --max-num-seqs)", "n")
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
