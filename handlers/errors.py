"""The one error type handlers answer with, and the one mapping to it."""

from __future__ import annotations

from storage.errors import (
    Invalid,
    NotFound,
    OutOfScope,
    Revoked,
    StorageError,
    StorageUnavailable,
)


class ApiError(Exception):
    """What the client sees: a status, a message meant for it, optional
    details and headers. `expected` is False for a failure that is a bug or
    an unknown database error: it is logged with its traceback."""

    def __init__(
        self,
        status: int,
        message: str,
        details: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        *,
        expected: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}
        self.expected = expected


_RETRY = {"Retry-After": "1"}
#: What a 401 asks for.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="imagelist"'}


def map_exception(exc: BaseException | None) -> ApiError | None:
    """Domain errors and ApiErrors -> what the client sees; None for the rest
    (Tornado's own HTTPErrors and bugs)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotFound):
        return ApiError(404, "image not found", {"id": str(exc)})
    if isinstance(exc, Revoked):  # the same answer as a token refused at once
        return ApiError(401, "invalid or disabled token", headers=CHALLENGE)
    if isinstance(exc, OutOfScope):
        return ApiError(
            403,
            f"token {exc.actor!r} may not write repository {exc.name!r}",
            {"token": exc.actor, "repository": exc.name},
        )
    if isinstance(exc, Invalid):
        return ApiError(400, str(exc), exc.details)
    if isinstance(exc, StorageUnavailable):
        return ApiError(503, "database unavailable, try again later", headers=_RETRY)
    if isinstance(exc, StorageError):
        return ApiError(503, "database error, try again later", headers=_RETRY, expected=False)
    return None
