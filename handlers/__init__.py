"""HTTP handlers and the application factory."""

from __future__ import annotations

import re
from typing import Any

import tornado.web

from handlers.admission import (
    AllowedHandler,
    GatekeeperHandler,
    ImagePolicyHandler,
    ValidateHandler,
)
from handlers.base import BaseHandler, log_request
from handlers.context import AppContext
from handlers.docs import OpenApiDocument, OpenApiJsonHandler, OpenApiYamlHandler
from handlers.events import EventsHandler
from handlers.health import LiveHandler, NotFoundHandler, PingHandler
from handlers.images import EntriesHandler, EntryHandler
from handlers.metrics import MetricsHandler
from handlers.mutation import GatekeeperMutateHandler, MutateHandler

__all__ = ["AppContext", "make_app", "route_pattern"]

#: Every routed handler; each declares its own route template.
HANDLERS: tuple[type[BaseHandler], ...] = (
    EntriesHandler,
    EntryHandler,
    EventsHandler,
    PingHandler,
    LiveHandler,
    MetricsHandler,
    AllowedHandler,
    ValidateHandler,
    ImagePolicyHandler,
    GatekeeperHandler,
    MutateHandler,
    GatekeeperMutateHandler,
    OpenApiYamlHandler,
    OpenApiJsonHandler,
)


def route_pattern(template: str) -> str:
    """A handler's route template as the regex Tornado routes on:
    `/images/{id}` -> `/images/(.+)` (a parameter takes the rest of the path,
    `/` and `@` included: ids may be repo digests)."""
    parts = re.split(r"(\{[^}]+\})", template)
    return "".join("(.+)" if part.startswith("{") else re.escape(part) for part in parts)


def make_app(ctx: AppContext) -> tornado.web.Application:
    args: dict[str, Any] = {"ctx": ctx}
    return tornado.web.Application(
        [(route_pattern(h.route), h, args) for h in HANDLERS],
        openapi_document=OpenApiDocument.load(),
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=log_request,
        serve_traceback=False,
        compress_response=False,
    )
