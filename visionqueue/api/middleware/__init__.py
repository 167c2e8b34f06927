"""The front's ASGI middleware, one concern each, outermost first.

================  =================================================================
``protocols``     protocol routes' errors in their protocol's shape (``api/protocols``)
``hosts``         with API keys off, only our own host names (DNS rebinding)
``health``        health probes go to the front's own routes (``api/health.py``)
``auth``          API keys on job and predict routes, optional ``/metrics`` token
``limits``        body-size cap, upload-form checks
``envelope``      framework error responses rewritten into ``{"error": {...}}``
``docs``          ``/docs.json`` with ``/predict``'s errors as the envelope sends them
================  =================================================================

The classifier service gets one, when ``VQ_CLASSIFIER_TOKEN`` is set: ``auth``'s
``ClassifierTokenAuth`` (``classifier_middleware``).
"""

from __future__ import annotations

from typing import Any

from visionqueue.api.middleware.asgi import ASGIApp
from visionqueue.api.middleware.auth import ApiKeyAuth, ClassifierTokenAuth
from visionqueue.api.middleware.docs import OpenApiErrors
from visionqueue.api.middleware.envelope import ErrorEnvelope
from visionqueue.api.middleware.health import HealthRoutes
from visionqueue.api.middleware.hosts import HostCheck, allowed_host_names
from visionqueue.api.middleware.limits import RequestLimits
from visionqueue.api.protocols.error_shapes import ProtocolErrorShapes
from visionqueue.core.settings import ModelSettings, ServerSettings


def front_middleware(server: ServerSettings, api_app: ASGIApp) -> list[tuple[type, dict[str, Any]]]:
    """Return the front's middleware and their options, outermost first."""
    return [
        (ProtocolErrorShapes, {}),
        (
            HostCheck,
            {
                "keys_enabled": bool(server.api_keys),
                "names": allowed_host_names(server.public_url, server.host, server.allowed_hosts),
            },
        ),
        (HealthRoutes, {"health_app": api_app}),
        (
            ApiKeyAuth,
            {
                "api_keys": [key.get_secret_value() for key in server.api_keys],
                "metrics_token": server.metrics_token.get_secret_value(),
                "service_token": server.service_token.get_secret_value(),
            },
        ),
        (RequestLimits, {"max_body_bytes": server.max_upload_bytes}),
        (ErrorEnvelope, {}),
        (OpenApiErrors, {}),
    ]


def classifier_middleware(model: ModelSettings) -> list[tuple[type, dict[str, Any]]]:
    """Return the classifier service's middleware and their options (none without a token)."""
    token = model.classifier_token.get_secret_value()
    return [(ClassifierTokenAuth, {"token": token})] if token else []
