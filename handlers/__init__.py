"""HTTP handlers and the application factory."""

from __future__ import annotations

import tornado.web

from handlers.admission import (
    AllowedHandler,
    GatekeeperHandler,
    ImagePolicyHandler,
    ValidateHandler,
)
from handlers.base import log_request
from handlers.context import AppContext
from handlers.docs import OpenApiDocument, OpenApiJsonHandler, OpenApiYamlHandler
from handlers.health import LiveHandler, NotFoundHandler, PingHandler
from handlers.images import ImageHandler, ImagesHandler
from handlers.metrics import MetricsHandler
from handlers.mutation import GatekeeperMutateHandler, MutateHandler

__all__ = ["AppContext", "make_app"]


def make_app(ctx: AppContext) -> tornado.web.Application:
    args = {"ctx": ctx}
    document = OpenApiDocument.load()
    routes = [
        (r"/images", ImagesHandler, args),
        (r"/images/(.+)", ImageHandler, args),
        (r"/health/ping", PingHandler, args),
        (r"/health/live", LiveHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/openapi\.yaml", OpenApiYamlHandler, {**args, "document": document}),
        (r"/openapi\.json", OpenApiJsonHandler, {**args, "document": document}),
        (r"/allowed", AllowedHandler, args),
        (r"/admission/validate", ValidateHandler, args),
        (r"/admission/imagepolicy", ImagePolicyHandler, args),
        (r"/admission/gatekeeper", GatekeeperHandler, args),
        (r"/admission/mutate", MutateHandler, args),
        (r"/admission/gatekeeper/mutate", GatekeeperMutateHandler, args),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=log_request,
        serve_traceback=False,
        compress_response=False,
    )
