"""A served API never fetches a URL a client sent: upload fields take uploaded files only.

BentoML 1.4 treats a multipart *text* field in a file field (``image=https://...``) as a URL
and downloads it with no size cap; its guard stops loopback and private ranges but not
100.64.0.0/10 or any public host. The ``no-url-uploads`` patch (``patches.py``) puts
``refuse_url_upload`` in place of ``MultipartSerde.ensure_file``, so that path is closed on
every BentoML API, whatever the front's form checks let through.
"""

from __future__ import annotations

from typing import Any


async def refuse_url_upload(obj: Any) -> Any:
    """Return an uploaded file as it is; refuse anything else (a text field) as bad input."""
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile

    if isinstance(obj, UploadFile):
        return obj
    raise BadInput("a file field must carry an uploaded file, not text or a URL")
