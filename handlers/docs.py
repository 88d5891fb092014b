"""Serves openapi.yaml (and the same document as JSON)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from handlers.base import BaseHandler

_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "openapi.yaml",  # a checkout
    Path(sys.prefix) / "share" / "imagelist" / "openapi.yaml",  # pip install (data_files)
)


@dataclass(frozen=True)
class OpenApiDocument:
    yaml: bytes
    json: bytes

    @classmethod
    def load(cls) -> OpenApiDocument:
        for path in _CANDIDATES:
            if path.is_file():
                raw = path.read_bytes()
                return cls(yaml=raw, json=orjson.dumps(yaml.safe_load(raw)))
        raise FileNotFoundError("openapi.yaml not found in: " + ", ".join(map(str, _CANDIDATES)))


class OpenApiYamlHandler(BaseHandler):
    route = "/openapi.yaml"

    @property
    def document(self) -> OpenApiDocument:
        # Loaded once by make_app() and kept in the application's settings.
        document: OpenApiDocument = self.settings["openapi_document"]
        return document

    def get(self) -> None:
        self.set_header("Content-Type", "application/yaml")
        self.finish(self.document.yaml)


class OpenApiJsonHandler(OpenApiYamlHandler):
    route = "/openapi.json"

    def get(self) -> None:
        self.finish(self.document.json)
