"""openapi.yaml matches what the app serves: routes, methods, and the document itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from handlers import make_app, route_pattern
from handlers.validation import ID_PATTERN, NAME_PATTERN

DOC = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi.yaml").read_text())
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def app_routes(ctx) -> dict[str, set[str]]:
    """Every registered route (its declared template, which it is routed on) with its methods."""
    from tornado.web import RequestHandler

    routes: dict[str, set[str]] = {}
    for rule in make_app(ctx).wildcard_router.rules:
        handler = rule.target
        methods = {m for m in METHODS if getattr(handler, m) is not getattr(RequestHandler, m)}
        routes[handler.route] = methods
    return routes


def test_every_route_is_documented_and_every_documented_path_exists(ctx) -> None:
    served = app_routes(ctx)
    documented = {path: set(ops) & METHODS for path, ops in DOC["paths"].items()}
    assert served == documented


def test_validation_patterns_are_the_documented_ones() -> None:
    schemas = DOC["components"]["schemas"]
    assert schemas["Id"]["pattern"] == ID_PATTERN
    assert schemas["Name"]["pattern"] == NAME_PATTERN


@pytest.mark.gen_test
async def test_document_is_served_as_yaml_and_json(api) -> None:
    as_yaml = await api.get("/openapi.yaml")
    assert as_yaml.status == 200 and as_yaml.headers["Content-Type"] == "application/yaml"
    assert yaml.safe_load(as_yaml.body) == DOC
    as_json = await api.get("/openapi.json")
    assert as_json.status == 200 and as_json.json == DOC
    assert re.match(r"3\.1\.\d", as_json.json["openapi"])


@pytest.mark.parametrize(
    ("template", "path", "groups"),
    [
        ("/images/{id}", "/images/quay.io/foo/app@sha256:ab", ("quay.io/foo/app@sha256:ab",)),
        ("/openapi.yaml", "/openapi.yaml", ()),
        ("/openapi.yaml", "/openapiXyaml", None),
        ("/images", "/images/x", None),
    ],
)
def test_route_templates_route_what_they_say(
    template: str, path: str, groups: tuple[str, ...] | None
) -> None:
    match = re.fullmatch(route_pattern(template), path)
    assert (match.groups() if match else None) == groups
