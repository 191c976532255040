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
from typing import Optional

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vllm.engine.arg_utils import DEFAULT_MODEL, EngineArgs
from vllm.entrypoints.openai import metrics as metrics_mod
from vllm.entrypoints.openai.async_engine import AsyncEngine
from vllm.entrypoints.openai.protocol import OpenAIError, bad_request, error_body, now
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat, load_chat_template
from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm.logger import init_logger
from vllm.version import __version__

logger = init_logger(__name__)


class APIKeyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would hide client disconnects from streams)."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

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
        if not hmac.compare_digest(got, self.expected):
            resp = JSONResponse(error_body("Unauthorized: a valid API key is required", 401),
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _json_body(request: Request):
    raw = await request.body()
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"malformed JSON body: {e}") from None


def build_app(engine_args: EngineArgs, api_key: Optional[str] = None, *,
              chat_template: Optional[str] = None, response_role: str = "assistant",
              engine=None) -> FastAPI:
    """Load the engine (blocking) and return the app. The engine loop thread starts with the
    app's lifespan and stops (aborting what is still running) when it ends."""
    if engine is None:
        from vllm.v1.engine.llm_engine import LLMEngine
        engine = LLMEngine.from_engine_args(engine_args)
    aengine = AsyncEngine(engine)
    model_name = engine.config.model_config.served_model_name
    max_model_len = engine.max_model_len
    completion = OpenAIServingCompletion(aengine, model_name, engine.tokenizer, max_model_len)
    chat = OpenAIServingChat(aengine, model_name, engine.tokenizer, max_model_len,
                             chat_template=chat_template, response_role=response_role)
    registry = metrics_mod.make_registry(lambda: [engine.stats])
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
            body = await _json_body(request)
        except OpenAIError as e:
            return JSONResponse(e.body(), status_code=e.status)
        return await completion.create(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await _json_body(request)
        except OpenAIError as e:
            return JSONResponse(e.body(), status_code=e.status)
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
    p.add_argument("--disable-log-requests", action="store_true", help="accepted; no effect")
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
    app = build_app(engine_args, api_key=args.api_key,
                    chat_template=load_chat_template(args.chat_template),
                    response_role=args.response_role)
    grace = max(0.0, float(args.graceful_shutdown_timeout))
    # uvicorn's own deadline (after which it cancels handlers outright) comes later than ours:
    # at ours, the engine fails what is still running, so every stream ends with an error
    # event and [DONE] instead of a cut connection.
    config = uvicorn.Config(app, host=args.host, port=args.port,
                            log_level=args.uvicorn_log_level,
                            access_log=not args.disable_uvicorn_access_log,
                            timeout_graceful_shutdown=int(grace) + 5,
                            timeout_keep_alive=5, lifespan="on")
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
