"""``document_predict_errors``: /predict's OpenAPI entry lists the envelope we answer with."""

from __future__ import annotations

from typing import Any

from visionqueue.api.openapi_errors import document_predict_errors


def _bentoml_style_spec() -> dict[str, Any]:
    bento_error = {"content": {"application/json": {"schema": {"$ref": "#/x/InvalidArgument"}}}}
    return {
        "paths": {
            "/predict": {
                "post": {
                    "responses": {
                        "200": {"description": "Successful Response"},
                        "400": bento_error,
                        "404": bento_error,
                        "500": bento_error,
                    }
                }
            },
            "/v1/jobs": {"get": {"responses": {"404": {"description": "kept"}}}},
        },
        "components": {"schemas": {}},
    }


def test_bentomls_errors_are_replaced_by_the_envelope() -> None:
    spec = document_predict_errors(_bentoml_style_spec())
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert sorted(responses) == ["200", "400", "401", "404", "413", "415", "422", "503"]
    assert responses["200"] == {"description": "Successful Response"}
    assert spec["paths"]["/v1/jobs"]["get"]["responses"] == {"404": {"description": "kept"}}
    schemas = spec["components"]["schemas"]
    assert set(schemas) == {"ErrorEnvelope", "ErrorDetail"}  # added when the app had none
    assert schemas["ErrorEnvelope"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail"
    }


def test_a_document_without_predict_is_left_alone() -> None:
    spec = {"paths": {"/x": {}}}
    assert document_predict_errors(spec) == {"paths": {"/x": {}}}
