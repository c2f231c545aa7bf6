"""The gateway's ASGI app: the OpenAI routes over the executors, auth, `/health`, `/metrics`, and one
log line per request.

A generation always runs as the executor's `Generate` stream: the first event is awaited before the
HTTP response starts, so an error the executor finds in the request (or an executor that is down or
busy, after trying the model's other executors) still gets its proper HTTP status; later errors of a
stream arrive as an `{"error": ...}` event before `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from moeqos.api.server import token_matches
from moeqos.core.errors import MoeqosError, OverBudget, Unavailable
from moeqos.core.service_types import GenerationEvent, GenerationStats
from moeqos.gateway import errors
from moeqos.gateway.config import GatewayConfig
from moeqos.gateway.errors import ApiError
from moeqos.gateway.metrics import GatewayMetrics
from moeqos.gateway.protocol import GenerationRequest, Reply, finish, parse_chat, parse_completion
from moeqos.gateway.routing import Backend, Router
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("moeqos.gateway")

ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


@dataclass
class Opened:
    """A generation whose first event has arrived: the executor it runs on and the rest of its events."""

    backend: Backend
    first: GenerationEvent
    rest: AsyncIterator[GenerationEvent]


class Gateway:
    """The routes' handlers over one Router (made in the app's lifespan, on the serving loop)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._router: Router | None = None
        self.metrics = GatewayMetrics(lambda: self.router.in_flight() if self._router else iter(()))

    @property
    def router(self) -> Router:
        assert self._router is not None, "the router is made in the app's lifespan"
        return self._router

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._router = Router(self.config.routes, self.config.executor_options())
        try:
            yield
        finally:
            await self._router.close()

    # ----- the OpenAI routes ----------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, parse_completion)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, lambda body: parse_chat(body, self.config.default_max_tokens))

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [_model(m) for m in self.router.models]})

    async def model(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["model"]
        self.router.backends(name)  # 404 for an unknown model
        return JSONResponse(_model(name))

    async def _generate(self, request: Request, parse: Callable[[Any], GenerationRequest]) -> Response:
        self._authorize(request)
        started = time.perf_counter()
        wanted = parse(await _json(request))
        _note(request, model=wanted.model)
        opened = await self._open(wanted)
        _note(request, executor=opened.backend.address)
        reply = Reply.start(wanted)
        ttft = time.perf_counter() - started
        events = self._events(opened)
        if wanted.stream:
            return EventSourceResponse(self._chunks(request, reply, events, ttft))
        parts, stats = [], None
        try:
            async for event in events:
                parts.append(event.text)
                stats = event.stats or stats
        except MoeqosError as exc:
            raise errors.from_domain(exc) from exc
        assert stats is not None, "a generation's last event carries its stats"
        self._finished(request, wanted.model, stats, ttft)
        return JSONResponse(reply.whole("".join(parts), stats))

    async def _open(self, wanted: GenerationRequest) -> Opened:
        """Start the generation on the least-loaded executor that takes it, trying the model's others
        when one is down or busy; 503 when none can (429 when some were only busy)."""
        busy, reasons = False, list[str]()
        for backend in self.router.candidates(wanted.model):
            self.router.begin(backend)
            stream = backend.client.generate(
                wanted.prompt, wanted.sampling, timeout=self.config.request_timeout_s
            )
            try:
                first = await anext(stream)
            except (Unavailable, OverBudget) as exc:
                self.router.end(backend, down=isinstance(exc, Unavailable))
                busy, reasons = busy or isinstance(exc, OverBudget), [*reasons, f"{backend.address}: {exc}"]
                continue
            except BaseException as exc:
                self.router.end(backend)
                if isinstance(exc, MoeqosError):
                    raise errors.from_domain(exc) from exc
                raise
            return Opened(backend, first, stream)
        if busy:
            raise errors.from_domain(OverBudget("; ".join(reasons)))
        raise errors.no_executor(wanted.model, "; ".join(reasons))

    async def _events(self, opened: Opened) -> AsyncIterator[GenerationEvent]:
        """The generation's events; its executor's count drops (and the call is cancelled if the
        client left) when they end."""
        try:
            yield opened.first
            async for event in opened.rest:
                yield event
        finally:
            await opened.rest.aclose()  # type: ignore[attr-defined]
            self.router.end(opened.backend)

    async def _chunks(
        self, request: Request, reply: Reply, events: AsyncIterator[GenerationEvent], ttft: float
    ) -> AsyncIterator[str]:
        """The server-sent events of a streamed response, ending with `[DONE]`."""
        if reply.request.chat:
            yield json.dumps(reply.chunk(None))
        try:
            async for event in events:
                if event.stats is not None:
                    yield json.dumps(reply.chunk("", finish(event.stats)))
                    if reply.request.include_usage:
                        yield json.dumps(reply.usage_chunk(event.stats))
                    self._finished(request, reply.request.model, event.stats, ttft)
                elif event.text:
                    yield json.dumps(reply.chunk(event.text))
        except MoeqosError as exc:
            error = errors.from_domain(exc)
            _note(request, error=error.status)
            yield json.dumps(error.body())
        yield "[DONE]"

    def _finished(self, request: Request, model: str, stats: GenerationStats, ttft: float) -> None:
        self.metrics.generation(model, stats, finish(stats), ttft)
        _note(
            request,
            prompt_tokens=stats.prompt_tokens,
            tokens=stats.generated_tokens,
            finish=finish(stats),
            ttft_ms=round(ttft * 1000, 1),
        )

    # ----- plumbing -------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        """200 when every model has a serving executor, else 503; the status of each executor."""
        models = {}
        for model in self.router.models:
            backends = self.router.backends(model)
            states = await asyncio.gather(*(_health(b) for b in backends))
            models[model] = [
                {"address": b.address, "status": s} for b, s in zip(backends, states, strict=True)
            ]
        ok = all(any(e["status"] == "SERVING" for e in executors) for executors in models.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": models}, 200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _authorize(self, request: Request) -> None:
        if self.config.token is None:
            return
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token_matches(presented.strip(), self.config.token):
            raise errors.unauthorized()


def create_app(config: GatewayConfig) -> ASGIApp:
    """The gateway as an ASGI app (serve it with uvicorn; see moeqos.gateway.server)."""
    gateway = Gateway(config)
    app = Starlette(
        routes=[
            Route("/v1/completions", gateway.completions, methods=["POST"]),
            Route("/v1/chat/completions", gateway.chat, methods=["POST"]),
            Route("/v1/models", gateway.models, methods=["GET"]),
            Route("/v1/models/{model:path}", gateway.model, methods=["GET"]),
            Route("/health", gateway.health, methods=["GET"]),
            Route("/metrics", gateway.prometheus, methods=["GET"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=gateway.lifespan,
    )
    return RequestLog(app, gateway.metrics)


class RequestLog:
    """ASGI middleware: counts and times every request (to the response's last byte, so a stream is
    timed whole) and writes one line per request, with the fields handlers noted (`_note`):

        route=/v1/chat/completions status=200 duration_ms=812.4 model=smollm2-moe8:fast tokens=16 ...
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        fields: dict[str, Any] = {}
        scope.setdefault("state", {})["log"] = fields

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            seconds = time.perf_counter() - started
            route = _route(scope["path"])
            self.metrics.request(route, scope["method"], status, seconds)
            extra = "".join(f" {k}={v}" for k, v in fields.items())
            log.info(
                "route=%s method=%s status=%d duration_ms=%.1f%s",
                route,
                scope["method"],
                status,
                seconds * 1000,
                extra,
            )


def _route(path: str) -> str:
    """The metric label of a path: one of the routes, or `other` (no label per stray path)."""
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in ROUTES else "other"


def _note(request: Request, **fields: Any) -> None:
    """Add fields to the request's log line."""
    request.scope.setdefault("state", {}).setdefault("log", {}).update(fields)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "moeqos"}


async def _health(backend: Backend) -> str:
    try:
        return await backend.client.health(timeout=2.0)
    except MoeqosError:
        return "UNREACHABLE"


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in the OpenAI shape."""
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(ApiError(exc.status_code, str(exc.detail), kind).body(), exc.status_code)
