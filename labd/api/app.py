"""The Starlette application of labd's REST API.

Everything is given to the constructor, in Starlette 1.x style: the routes
(from the route table), the middleware stack, the exception handlers and
the lifespan.  The middleware stack, outermost first::

    ServerErrorMiddleware   Starlette's last resort (never reached in practice)
    ErrorBoundary           unexpected exception -> logged, generic 500
    RequestLimits           request line and headers over 16 KiB -> 431, closed;
                            body over config.max_body_size -> 413
    ExceptionMiddleware     LabdError, validation, 404/405 -> error body
    Router                  the routes of labd.api.routes
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Lifespan

from labd.alerts import Alerts
from labd.api.auth import Authenticator
from labd.api.errors import ErrorBoundary, exception_handlers
from labd.api.handlers import LabApi, Leadership, MetricsSource, Readiness
from labd.api.limits import RequestLimits
from labd.api.openapi import openapi_document
from labd.api.routes import build_routes
from labd.api.service import LabService
from labd.api.sse import DEFAULT_KEEPALIVE, EventStreams
from labd.config import Config

__all__ = ["create_app"]


def create_app(
    *,
    config: Config,
    service: LabService,
    authenticator: Authenticator,
    readiness: Readiness,
    lifespan: Lifespan[Starlette] | None = None,
    keepalive: float = DEFAULT_KEEPALIVE,
    metrics: MetricsSource | None = None,
    alerts: Alerts | None = None,
    leadership: Leadership | None = None,
) -> Starlette:
    """Build the API application.

    Parameters
    ----------
    config
        labd's configuration (``path_prefix``, ``max_body_size``, the stream
        caps of ``http``).
    service
        Where requests are answered.
    authenticator
        Recognises bearer tokens.
    readiness
        Returns `None` when labd is ready, otherwise why not (``/readyz``).
    lifespan
        The caller's start-up and shutdown, run around the application's.
    keepalive
        Seconds between keep-alive comments on event streams.
    metrics
        Renders ``/metrics`` (Prometheus text format).
    alerts
        Where unexpected failures are reported to operators.
    leadership
        Whether this replica leads (the ``/readyz`` body).

    Returns
    -------
    Starlette
        The application.  ``app.state.event_streams`` is its
        `~labd.api.sse.EventStreams`: a server that handles signals itself
        calls its ``close()`` when shutdown begins, so that open event
        streams do not hold the shutdown up (the lifespan's own shutdown
        comes only after the connections have ended).
    """
    streams = EventStreams(
        keepalive=keepalive,
        max_per_user=config.http.max_streams_per_user,
        max_total=config.http.max_streams,
    )
    api = LabApi(
        service=service,
        authenticator=authenticator,
        readiness=readiness,
        streams=streams,
        openapi=openapi_document(prefix=config.path_prefix),
        metrics=metrics,
        leadership=leadership,
    )

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[Any]:
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            streams.close()

    app = Starlette(
        routes=build_routes(api, prefix=config.path_prefix),
        middleware=[
            Middleware(ErrorBoundary, alerts=alerts),
            Middleware(RequestLimits, max_body_size=config.max_body_size),
        ],
        exception_handlers=exception_handlers(),
        lifespan=app_lifespan,
    )
    app.state.event_streams = streams
    return app
