"""The one exception tree of VisionQueue; every client-facing error is a ``VQError``.

    VQError                      code, HTTP status, safe message
    ├── BadRequest (400)
    │   ├── EmptyImage           empty_image
    │   ├── InvalidImage         invalid_image (corrupt, truncated, not decodable)
    │   └── MissingField         missing_field
    ├── Unauthorized (401)       unauthorized
    ├── NotFound (404)           not_found
    │   └── ModelNotFound        model_not_found (a model this deployment does not serve)
    ├── Conflict (409)           conflict
    ├── PayloadTooLarge (413)    payload_too_large
    ├── UnsupportedMediaType (415)
    ├── Unprocessable (422)      validation_error
    │   └── ImageTooLarge        image_too_large (pixel count over the cap: bombs)
    ├── TooManyRequests (429)    backlog_full
    ├── Unavailable (503)        service_unavailable
    │   ├── StorageUnavailable   storage_unavailable
    │   ├── DatabaseUnavailable  database_unavailable
    │   ├── BrokerUnavailable    broker_unavailable
    │   └── ModelNotReady        model_not_ready
    └── DeadlineExceeded (504)   deadline_exceeded (waited past its deadline, never classified)

    DomainError                  a rule of our own domain, with no HTTP status: raised by
    ├── JobNotFound              persistence, mapped to a ``VQError`` in one table by the front
    ├── ImageNotFound            (``visionqueue.api.domain_errors``); workers catch them by name
    ├── IdempotencyConflict
    └── InvalidCursor

Third-party errors are mapped at the boundary (``raise StorageUnavailable(...) from exc``);
messages never carry ``str(exc)`` of a third-party error or a secret.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VQError(Exception):
    """An error with a stable machine-readable code and the HTTP status to answer with."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]
        self.retry_after = retry_after
        self.details = details

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}

    def headers(self) -> dict[str, str]:
        retry_after = self.retry_after
        if retry_after is None and self.status == 503:
            retry_after = 5  # every "come back later" says when
        return {"Retry-After": str(retry_after)} if retry_after is not None else {}


class BadRequest(VQError):
    status = 400
    code = "bad_request"


class EmptyImage(BadRequest):
    code = "empty_image"


class InvalidImage(BadRequest):
    code = "invalid_image"


class MissingField(BadRequest):
    code = "missing_field"


class Unauthorized(VQError):
    status = 401
    code = "unauthorized"


class NotFound(VQError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(VQError):
    status = 409
    code = "conflict"


class PayloadTooLarge(VQError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(VQError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(VQError):
    status = 422
    code = "validation_error"


class ImageTooLarge(Unprocessable):
    code = "image_too_large"


class TooManyRequests(VQError):
    status = 429
    code = "backlog_full"


class Unavailable(VQError):
    status = 503
    code = "service_unavailable"


class StorageUnavailable(Unavailable):
    code = "storage_unavailable"


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


class BrokerUnavailable(Unavailable):
    code = "broker_unavailable"


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class DeadlineExceeded(VQError):
    status = 504
    code = "deadline_exceeded"


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """Build the error envelope for errors raised outside our own code (framework, ASGI)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


class DomainError(Exception):
    """A domain rule was broken; the caller decides what it means (an HTTP status, a failed job)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobNotFound(DomainError):
    """No job with this id belongs to this owner."""


class ImageNotFound(DomainError):
    """No stored image under this key (or the key is not an image key)."""


class IdempotencyConflict(DomainError):
    """The owner already submitted a job with this idempotency key."""


class InvalidCursor(DomainError):
    """A listing cursor that ``encode_cursor`` did not make."""
