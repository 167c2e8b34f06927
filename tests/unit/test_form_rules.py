"""Form shape checks and metadata/file-name hygiene, without a server."""

from __future__ import annotations

import pytest

from visionqueue.api.middleware.form_rules import FORM_RULES, form_problem
from visionqueue.api.submit import clean_filename, parse_metadata
from visionqueue.core.errors import Unprocessable

BOUNDARY = "xyz"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_a_well_formed_form_passes() -> None:
    body = form(("image", b"\xff\xd8\xff", "a.jpg"), ("top_k", b"3", None))
    assert form_problem(CT, body, FORM_RULES["/predict"]) is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (form(("image", b"a", "a.jpg"), ("image", b"b", "b.jpg")), "too_many_images"),
        (form(("image", b"http://10.0.0.1/x", None)), "validation_error"),
        (
            form(("image", b"a", "a.jpg"), ("top_k", b"1", None), ("top_k", b"2", None)),
            "validation_error",
        ),
        (b"garbage without any boundary", "bad_request"),
    ],
    ids=["two-files", "image-as-text", "duplicate-field", "garbage"],
)
def test_bad_forms_get_a_specific_code(body: bytes, code: str) -> None:
    problem = form_problem(CT, body, FORM_RULES["/predict"])
    assert problem is not None and problem.code == code
    assert 400 <= problem.status < 500


def test_v1_jobs_accepts_many_images() -> None:
    body = form(*[("images", b"x", f"{i}.jpg") for i in range(5)])
    assert form_problem(CT, body, FORM_RULES["/v1/jobs"]) is None


@pytest.mark.parametrize(
    "raw",
    [
        "[1, 2]",
        '"text"',
        "{not json",
        '{"x": NaN}',
        '{"x": 1e999}',
        '{"x": "\\u0000"}',
        "[" * 40 + "]" * 40,
    ],
)
def test_metadata_the_database_cannot_store_is_refused(raw: str) -> None:
    with pytest.raises(Unprocessable):
        parse_metadata(raw)


def test_metadata_round_trips_and_is_capped() -> None:
    assert parse_metadata('{"user": 42, "tags": ["a"]}') == {"user": 42, "tags": ["a"]}
    assert parse_metadata(None) == {} and parse_metadata("") == {}
    with pytest.raises(Unprocessable) as info:
        parse_metadata('{"x": "' + "a" * 20000 + '"}')
    assert info.value.code == "metadata_too_large"


def test_file_names_are_cleaned() -> None:
    assert clean_filename("cat\x00\n\t.jpg") == "cat.jpg"
    assert len(clean_filename("a" * 1000)) == 255
