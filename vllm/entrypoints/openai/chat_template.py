"""Chat templates rendered in a sandbox with a time and a size limit, off the event loop.

Jinja's ImmutableSandboxedEnvironment keeps templates away from Python internals, but not
from burning CPU (nested loops) or memory (``'ab ' * 2000000``). Here:
  * size: every ``*`` / ``+`` on strings or lists, and the output as it is produced, are held
    to ``max_chars``;
  * time: the render runs in its own thread; past ``timeout`` seconds a TimeoutError is raised
    inside that thread (CPython's asynchronous exception, delivered between bytecodes: Jinja
    templates compile to Python bytecode), so a runaway template stops instead of running on.
The environment offers what Hugging Face chat templates expect: trim_blocks / lstrip_blocks,
loop controls, ``tojson``, ``raise_exception`` and ``strftime_now``.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import threading
from datetime import datetime
from typing import Any, Optional

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_CHARS = 4 << 20


class ChatTemplateError(ValueError):
    """The template failed, or went past its time or size limit."""


class _Limited(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "+"})

    def __init__(self, max_chars: int):
        super().__init__(trim_blocks=True, lstrip_blocks=True,
                         extensions=["jinja2.ext.loopcontrols"])
        self.max_chars = max_chars
        self.filters["tojson"] = _tojson
        self.globals["raise_exception"] = _raise
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and \
                        len(seq) * max(n, 0) > self.max_chars:
                    raise ChatTemplateError(f"the chat template builds a value longer than "
                                            f"{self.max_chars} characters")
            return left * right
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                and len(left) + len(right) > self.max_chars:
            raise ChatTemplateError(f"the chat template builds a value longer than "
                                    f"{self.max_chars} characters")
        return left + right


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise(message):
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


@functools.lru_cache(maxsize=32)
def _compile(source: str, max_chars: int):
    return _Limited(max_chars).from_string(source)


def render_sync(source: str, variables: dict, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Render in the calling thread (no time limit: see ``render``)."""
    try:
        tmpl = _compile(source, max_chars)
        out, n = [], 0
        for piece in tmpl.generate(**variables):
            n += len(piece)
            if n > max_chars:
                raise ChatTemplateError(f"the rendered chat prompt is longer than {max_chars} "
                                        f"characters")
            out.append(piece)
        return "".join(out)
    except ChatTemplateError:
        raise
    except TimeoutError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError,
            RecursionError, ZeroDivisionError, OverflowError, MemoryError) as e:
        raise ChatTemplateError(f"could not apply the chat template: {type(e).__name__}: "
                                f"{e}") from None


def _interrupt(thread: threading.Thread) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                               ctypes.py_object(TimeoutError))


async def render(source: str, variables: dict, *, timeout: float = DEFAULT_TIMEOUT_S,
                 max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Render off the event loop, in a thread of its own that is interrupted at the time
    limit. Raises ChatTemplateError."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not fut.done():
            (fut.set_result if ok else fut.set_exception)(value)

    def work() -> None:
        try:
            res = (True, render_sync(source, variables, max_chars))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            res = (False, e)
        try:
            loop.call_soon_threadsafe(settle, *res)
        except RuntimeError:        # the loop is gone
            pass

    t = threading.Thread(target=work, name="chat-template", daemon=True)
    t.start()
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except asyncio.TimeoutError:
        fut.cancel()        # the thread's late result (its TimeoutError) is dropped
        _interrupt(t)
        raise ChatTemplateError(f"the chat template took longer than {timeout:g} s to "
                                f"render") from None
    except asyncio.CancelledError:      # the client went away: stop the render too
        fut.cancel()
        _interrupt(t)
        raise
    except TimeoutError as e:   # raised inside the thread by a late interrupt
        raise ChatTemplateError(f"the chat template took longer than {timeout:g} s to "
                                f"render") from e


def template_variables(tokenizer, messages: list, tools: Optional[list],
                       add_generation_prompt: bool, extra: dict) -> dict:
    """What Hugging Face chat templates are given: messages, tools, the special tokens,
    add_generation_prompt and the request's chat_template_kwargs."""
    v: dict[str, Any] = {}
    if tokenizer is not None:
        for k, tok in (getattr(tokenizer, "special_tokens_map", None) or {}).items():
            if isinstance(tok, str):
                v[k] = tok
    v.update(extra)
    v.update(messages=messages, tools=tools, documents=None,
             add_generation_prompt=add_generation_prompt)
    return v


def continue_final(rendered: str, messages: list) -> str:
    """continue_final_message: cut the prompt right after the final message's content, so
    the model continues it (no end-of-turn tokens after it)."""
    last = messages[-1].get("content") or ""
    if isinstance(last, str) and last.strip():
        i = rendered.rfind(last.strip())
        if i >= 0:
            return rendered[:i + len(last.strip())]
    return rendered
