"""Domain errors from persistence reach clients with the status the front's one table gives."""

from __future__ import annotations

import pytest

from visionqueue.api.domain_errors import HTTP_ERRORS, to_http_error
from visionqueue.core import errors
from visionqueue.core.errors import DomainError


def _all_domain_errors() -> list[type[DomainError]]:
    found: list[type[DomainError]] = []
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        cls = pending.pop()
        found += cls.__subclasses__()
        pending += cls.__subclasses__()
    return found


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.JobNotFound, 404, "not_found"),
        (errors.ImageNotFound, 404, "not_found"),
        (errors.IdempotencyConflict, 409, "conflict"),
        (errors.InvalidCursor, 400, "bad_request"),
    ],
)
def test_each_domain_error_maps_to_its_status(
    error: type[DomainError], status: int, code: str
) -> None:
    http = to_http_error(error("what happened"))
    assert (http.status, http.code, http.message) == (status, code, "what happened")


def test_every_domain_error_has_a_client_status() -> None:
    unmapped = [cls for cls in _all_domain_errors() if to_http_error(cls("x")).status >= 500]
    assert len(_all_domain_errors()) >= len(HTTP_ERRORS)
    assert unmapped == []


def test_domain_errors_carry_no_http_status() -> None:
    assert not issubclass(DomainError, errors.VQError)
    assert not hasattr(errors.JobNotFound("x"), "status")
