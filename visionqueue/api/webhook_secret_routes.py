"""``GET /v1/webhook-secret``: the calling tenant's own webhook signing secrets.

Only the owner of an API key sees its secrets (the route needs the key); they verify the
events of that key's jobs (``jobs/webhooks/tenant_secrets.py``, docs/security.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from jobs.webhooks.tenant_secrets import tenant_secrets
from visionqueue.api.openapi_errors import error_responses
from visionqueue.api.routes import owner, resources
from visionqueue.core.errors import NotFound

router = APIRouter(tags=["webhooks"])


@router.get("/v1/webhook-secret", responses=error_responses(401, 404))
async def webhook_secret(request: Request) -> dict[str, Any]:
    """Return the secrets that verify your jobs' webhooks, current first."""
    caller = owner(request)
    hook = resources(request).settings.webhook
    if not caller or not hook.secrets:
        raise NotFound(
            "no tenant secret here: API keys are off or VQ_WEBHOOK_SECRETS is empty; "
            "events are signed with the shared secrets, if any"
        )
    return {
        "secrets": tenant_secrets(hook, caller),
        "mode": hook.tenant_secrets,
        "also_signed_with_shared_secrets": hook.tenant_secrets == "both",
    }
