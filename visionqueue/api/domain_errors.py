"""Map the domain errors persistence raises to the HTTP errors clients get: the one table."""

from __future__ import annotations

from visionqueue.core.errors import (
    BadRequest,
    Conflict,
    DomainError,
    IdempotencyConflict,
    ImageNotFound,
    InvalidCursor,
    JobNotFound,
    NotFound,
    VQError,
)

HTTP_ERRORS: dict[type[DomainError], type[VQError]] = {
    JobNotFound: NotFound,
    ImageNotFound: NotFound,
    IdempotencyConflict: Conflict,
    InvalidCursor: BadRequest,
}


def to_http_error(exc: DomainError) -> VQError:
    """Return the client-facing error for ``exc`` (a 500 for a domain error not in the table)."""
    for domain_error, http_error in HTTP_ERRORS.items():
        if isinstance(exc, domain_error):
            return http_error(exc.message)
    return VQError("internal error")
