"""The OpenAI-compatible HTTP server: a FastAPI app around one AsyncEngine, run by uvicorn.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /version, GET /metrics (Prometheus text). Every error is an OpenAI-style JSON body
``{"error": {"message", "type", "param", "code"}}``; with an API key, /v1/* needs
``Authorization: Bearer <key>``.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vllm.engine.arg_utils import DEFAULT_MODEL, EngineArgs
from vllm.entrypoints.openai import metrics as metrics_mod
from vllm.entrypoints.openai.async_engine import AsyncEngine
from vllm.entrypoints.openai.http_guard import guarded_protocol
from vllm.entrypoints.openai.protocol import (Limits, OpenAIError, bad_request,
                                              check_json_tree, error_body, now)
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat, load_chat_template
from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm.logger import init_logger
from vllm.version import __version__

logger = init_logger(__name__)


DEFAULT_MAX_BODY_BYTES = 32 << 20


@dataclass
class ServerOptions:
    """The HTTP layer's own limits and switches (the engine's are EngineArgs)."""
    max_request_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    trust_request_chat_template: bool = False
    chat_template_timeout: float = 5.0
    max_log_len: Optional[int] = None
    enable_log_requests: bool = False


class APIKeyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would hide client disconnects from streams).
    The scheme is case-insensitive (RFC 7235); the key is compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = api_key.encode()

    def _ok(self, value: bytes) -> bool:
        scheme, _, token = value.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") == "OPTIONS"
                or not scope.get("path", "").startswith("/v1")):
            await self.app(scope, receive, send)
            return
        got = b""
        for k, v in scope.get("headers", []):
            if k.lower() == b"authorization":
                got = v
                break
        if not self._ok(got):
            resp = JSONResponse(error_body("Unauthorized: a valid API key is required", 401),
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


async def _json_body(request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """The body as JSON, checked: a JSON content type (415 otherwise: form and text/plain
    bodies are what cross-site pages can send without asking), at most ``max_bytes`` (413,
    told before the body is read when Content-Length says so), valid JSON and text (400)."""
    ctype = request.headers.get("content-type")
    if ctype is not None and not _is_json_type(ctype):
        raise OpenAIError(f"unsupported Content-Type {ctype[:80]!r}: send application/json",
                          415)
    too_big = OpenAIError(f"the request body is larger than the server's limit of {max_bytes} "
                          f"bytes (--max-request-body-bytes)", 413)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object")
    if len(raw) <= INLINE_PARSE_BYTES:
        return _parse_json(raw)
    # A large body is parsed in a worker thread: the event loop keeps serving meanwhile.
    return await asyncio.get_running_loop().run_in_executor(None, _parse_json, raw)


INLINE_PARSE_BYTES = 256 << 10


def _parse_json(raw: bytes):
    try:
        body = json.loads(raw)
    except RecursionError:
        raise bad_request("the JSON body nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"malformed JSON body: {str(e)[:200]}") from None
    check_json_tree(body)
    return body


def _log_request(kind: str, body, max_len: Optional[int]) -> None:
    text = json.dumps(body, ensure_ascii=False)
    if max_len is not None and len(text) > max_len:
        text = text[:max_len] + f"... ({len(text)} characters)"
    logger.info("Received %s request: %s", kind, text)


def build_app(engine_args: EngineArgs, api_key: Optional[str] = None, *,
              chat_template: Optional[str] = None, response_role: str = "assistant",
              engine=None, options: Optional[ServerOptions] = None) -> FastAPI:
    """Load the engine (blocking) and return the app. The engine loop thread starts with the
    app's lifespan and stops (aborting what is still running) when it ends."""
    if engine is None:
        from vllm.v1.engine.dp_engine import make_serving_engine
        engine = make_serving_engine(engine_args)   # DPEngine when data_parallel_size > 1
    aengine = AsyncEngine(engine)
    model_name = engine.config.model_config.served_model_name
    max_model_len = engine.max_model_len
    opts = options or ServerOptions()
    max_seqs = engine.config.scheduler_config.max_num_seqs
    limits = Limits(vocab_size=engine.config.model_config.vocab_size,
                    max_model_len=max_model_len, max_n=max_seqs,
                    max_seqs_per_request=max_seqs, max_log_len=opts.max_log_len)
    completion = OpenAIServingCompletion(aengine, model_name, engine.tokenizer, max_model_len,
                                         limits)
    chat = OpenAIServingChat(aengine, model_name, engine.tokenizer, max_model_len,
                             chat_template=chat_template, response_role=response_role,
                             limits=limits,
                             trust_request_chat_template=opts.trust_request_chat_template,
                             template_timeout=opts.chat_template_timeout)
    # Data parallelism: the replicas' sum and each replica (label engine="all" / "<i>").
    registry = metrics_mod.make_registry(getattr(engine, "all_stats", lambda: [engine.stats]))
    created = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        aengine.start(loop)
        try:
            yield
        finally:
            logger.info("Stopping the engine loop (%d request(s) still in flight)",
                        aengine.num_in_flight())
            await loop.run_in_executor(None, aengine.shutdown)

    app = FastAPI(title="vllm OpenAI-compatible server", version=__version__,
                  lifespan=lifespan)
    app.state.engine = aengine
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            msg = f"Not Found: {request.method} {request.url.path}"
        return JSONResponse(error_body(msg, exc.status_code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal server error: {exc!r}", 500),
                            status_code=500)

    @app.get("/health")
    async def health():
        if not aengine.is_running:
            return JSONResponse(error_body("the engine is not running", 503), status_code=503)
        return Response(status_code=200)

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "vllm",
            "root": engine.config.model_config.model, "parent": None,
            "max_model_len": max_model_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await _json_body(request, opts.max_request_body_bytes)
        except OpenAIError as e:
            return JSONResponse(e.body(), status_code=e.status)
        if opts.enable_log_requests:
            _log_request("completion", body, opts.max_log_len)
        return await completion.create(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await _json_body(request, opts.max_request_body_bytes)
        except OpenAIError as e:
            return JSONResponse(e.body(), status_code=e.status)
        if opts.enable_log_requests:
            _log_request("chat completion", body, opts.max_log_len)
        return await chat.create(body, request)

    @app.get("/metrics")
    def prometheus_metrics():
        # Sync: runs in the threadpool, so waiting for the stats lock (held by the engine
        # thread during a step) never blocks the event loop.
        return Response(metrics_mod.render(registry), media_type=metrics_mod.CONTENT_TYPE)

    return app


# ---------------------------------------------------------------------------- CLI / running
def add_server_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`vllm serve` flags: the server's own, then EngineArgs' (upstream names)."""
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help=f"model folder, .gguf file or name (default: {DEFAULT_MODEL})")
    p.add_argument("--model", default=None, help="same as the positional MODEL")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer <key>' on /v1/* routes")
    p.add_argument("--chat-template", default=None,
                   help="chat template (a file path or the Jinja text); default: the "
                        "tokenizer's")
    p.add_argument("--response-role", default="assistant")
    p.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    p.add_argument("--disable-uvicorn-access-log", action="store_true")
    p.add_argument("--disable-log-requests", action="store_true",
                   help="accepted; requests are not logged unless --enable-log-requests")
    p.add_argument("--enable-log-requests", action="store_true",
                   help="log each request's body (cut to --max-log-len characters)")
    p.add_argument("--max-log-len", type=int, default=None,
                   help="at most this many characters of a request in the log (default: all)")
    p.add_argument("--trust-request-chat-template", action="store_true",
                   help="accept a chat_template in chat requests (refused by default; "
                        "templates always render sandboxed, time- and size-limited)")
    p.add_argument("--chat-template-timeout", type=float, default=5.0,
                   help="seconds a chat template may take to render (default 5)")
    p.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"larger request bodies get 413 (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--timeout-keep-alive", type=int, default=5,
                   help="seconds an idle keep-alive connection stays open (uvicorn's)")
    p.add_argument("--http-header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers (default 10)")
    p.add_argument("--http-read-timeout", type=float, default=60.0,
                   help="seconds a client has to send a request's body after its headers "
                        "(default 60)")
    p.add_argument("--graceful-shutdown-timeout", type=float, default=10.0,
                   help="on SIGINT/SIGTERM, seconds in-flight requests get to finish before "
                        "they are aborted (default 10)")
    EngineArgs.add_cli_args(p)
    return p


def engine_args_from_cli(args: argparse.Namespace) -> EngineArgs:
    ea = EngineArgs.from_cli_args(args)
    if args.model_tag and args.model and args.model_tag != args.model:
        raise ValueError(f"two models given: {args.model_tag!r} and --model {args.model!r}")
    ea.model = args.model_tag or args.model or DEFAULT_MODEL
    return ea


def _graceful_server(config, aengine: AsyncEngine, grace: float):
    """A uvicorn.Server whose shutdown gives in-flight requests ``grace`` seconds, then fails
    them through the engine (they answer with an error) before uvicorn's hard deadline."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            loop = asyncio.get_running_loop()
            n = aengine.num_in_flight()
            if n:
                logger.info("Shutting down: %d request(s) in flight get %.1f s to finish", n,
                            grace)
            timer = loop.call_later(grace, aengine.fail_all, "the server is shutting down")
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return GracefulServer(config)


def run_server(args: argparse.Namespace) -> int:
    import uvicorn

    engine_args = engine_args_from_cli(args)
    for name in ("max_request_body_bytes", "http_header_timeout", "http_read_timeout",
                 "chat_template_timeout", "timeout_keep_alive"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    if args.max_log_len is not None and args.max_log_len < 0:
        raise ValueError("--max-log-len must be >= 0")
    options = ServerOptions(max_request_body_bytes=args.max_request_body_bytes,
                            trust_request_chat_template=args.trust_request_chat_template,
                            chat_template_timeout=args.chat_template_timeout,
                            max_log_len=args.max_log_len,
                            enable_log_requests=args.enable_log_requests)
    app = build_app(engine_args, api_key=args.api_key,
                    chat_template=load_chat_template(args.chat_template),
                    response_role=args.response_role, options=options)
    grace = max(0.0, float(args.graceful_shutdown_timeout))
    # uvicorn's own deadline (after which it cancels handlers outright) comes later than ours:
    # at ours, the engine fails what is still running, so every stream ends with an error
    # event and [DONE] instead of a cut connection.
    config = uvicorn.Config(app, host=args.host, port=args.port,
                            log_level=args.uvicorn_log_level,
                            access_log=not args.disable_uvicorn_access_log,
                            timeout_graceful_shutdown=int(grace) + 5,
                            timeout_keep_alive=args.timeout_keep_alive, lifespan="on",
                            http=guarded_protocol(args.http_header_timeout,
                                                  args.http_read_timeout))
    server = _graceful_server(config, app.state.engine, grace)
    # uvicorn re-raises the signal that stopped it once it is done; a graceful stop is a
    # normal exit, so let that re-raise hit a handler that does nothing.
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda sig, frame: received.append(sig))
    try:
        logger.info("Serving %s on http://%s:%d", engine_args.model, args.host, args.port)
        server.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received:
        logger.info("Server stopped by signal %d", received[0])
    return 0 if server.started or received else 1
