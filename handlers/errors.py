"""The one place errors become HTTP responses."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.errors import Invalid, NotFound, StorageError, StorageUnavailable


class ApiError(Exception):
    """An error with a status and a message meant for the client."""

    def __init__(
        self,
        status: int,
        message: str,
        details: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}


@dataclass
class Mapped:
    status: int
    message: str
    details: dict[str, object] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expected: bool = True  # False: a bug; log it with its traceback


def map_exception(exc: BaseException | None) -> Mapped | None:
    """Domain and API errors -> what the client sees; None for the rest."""
    if isinstance(exc, ApiError):
        return Mapped(exc.status, exc.message, exc.details, exc.headers)
    if isinstance(exc, NotFound):
        return Mapped(404, "image not found", {"id": str(exc)})
    if isinstance(exc, Invalid):
        return Mapped(400, f"invalid request: {exc}")
    if isinstance(exc, StorageUnavailable):
        return Mapped(503, "database unavailable, try again later", headers={"Retry-After": "1"})
    if isinstance(exc, StorageError):
        return Mapped(
            503, "database error, try again later", headers={"Retry-After": "1"}, expected=False
        )
    return None
