"""Framework error responses are rewritten into our one envelope."""

from __future__ import annotations

import json

from visionqueue.api.middleware.envelope import rewrite_error


def test_our_envelope_is_kept() -> None:
    body = {"error": {"code": "invalid_top_k", "message": "x"}}
    assert rewrite_error(422, json.dumps(body).encode()) == (422, body)


def test_bentoml_validation_error_becomes_422() -> None:
    raw = {
        "error": "1 validation error for Input",
        "detail": [
            {"loc": ["top_k"], "msg": "Input should be a valid integer", "type": "int_parsing"}
        ],
    }
    status, body = rewrite_error(400, json.dumps(raw).encode())
    assert status == 422
    assert body["error"]["code"] == "validation_error"
    assert "top_k" in body["error"]["message"]


def test_missing_field_becomes_400_missing_field() -> None:
    raw = {"error": "x", "detail": [{"loc": ["image"], "msg": "Field required", "type": "missing"}]}
    status, body = rewrite_error(400, json.dumps(raw).encode())
    assert (status, body["error"]["code"]) == (400, "missing_field")


def test_server_errors_never_leak_details() -> None:
    status, body = rewrite_error(500, b"Traceback (most recent call last): secret=hunter2")
    assert status == 500
    assert "hunter2" not in json.dumps(body)
    assert body["error"]["code"] == "internal_error"


def test_plain_text_404_and_405() -> None:
    assert rewrite_error(404, b"Not Found")[1]["error"]["code"] == "not_found"
    assert rewrite_error(405, b"Method Not Allowed")[1]["error"]["code"] == "method_not_allowed"
