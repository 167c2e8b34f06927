"""Upload-form rules: hostile form shapes get a 4xx before a framework parses them.

BentoML answers a malformed multipart body, one with too many parts or a binary file in
another field with a 500, and treats an ``image`` sent as a text field as a URL to
download; FastAPI silently keeps one of two ``image`` files. The front reads the (capped) body of the upload routes once, checks
its shape here without copying any part data, then hands the same bytes to the app.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from visionqueue.core.errors import BadRequest, Unprocessable, VQError

MAX_FORM_PARTS = 100


@dataclass(frozen=True)
class FormRule:
    """The shape of one route's form: its file field, how many files, fields given once."""

    file_field: str
    max_files: int | None
    single_fields: tuple[str, ...]


FORM_RULES = {
    "/predict": FormRule("image", 1, ("top_k", "model")),
    "/classify": FormRule("image", 1, ("webhook_url", "metadata", "model")),
    "/v1/jobs": FormRule("images", None, ("webhook_url", "metadata", "model")),
    "/api/upload-image": FormRule("file", 1, ()),
}


@dataclass
class _Parts:
    files: Counter[str]
    fields: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.files.values()) + sum(self.fields.values())


def _multipart_parts(body: bytes, boundary: bytes) -> _Parts:
    parts = _Parts(Counter(), Counter())
    header = [b"", b""]
    disposition: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        nonlocal disposition
        if header[0].strip().lower() == b"content-disposition":
            disposition = parse_options_header(header[1])[1]
        header[0] = header[1] = b""

    def on_part_end() -> None:
        nonlocal disposition
        if b"name" not in disposition:
            raise BadRequest("every form part needs a Content-Disposition with a name")
        name = disposition[b"name"].decode("latin-1")
        (parts.files if b"filename" in disposition else parts.fields)[name] += 1
        disposition = {}
        if parts.total > MAX_FORM_PARTS:
            raise BadRequest(f"the form has more than {MAX_FORM_PARTS} parts")

    callbacks = {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    parser.write(body)
    parser.finalize()
    return parts


def form_problem(content_type: str, body: bytes, rule: FormRule) -> VQError | None:
    """Return the error a form body deserves under ``rule``, or None if the app may parse it."""
    kind, options = parse_options_header(content_type)
    if kind == b"application/x-www-form-urlencoded":
        try:
            names = {k for k, _ in parse_qsl(body.decode("latin-1"), max_num_fields=MAX_FORM_PARTS)}
        except ValueError:
            return BadRequest(f"the form has more than {MAX_FORM_PARTS} fields")
        if rule.file_field in names:
            return Unprocessable(
                f"'{rule.file_field}' must be a file in a multipart/form-data body"
            )
        return None
    if kind != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary")
    if not boundary:
        return BadRequest("the multipart body has no boundary")
    try:
        parts = _multipart_parts(body, boundary)
    except VQError as exc:
        return exc
    except FormParserError:
        return BadRequest("the multipart body is malformed")
    if parts.fields[rule.file_field]:
        return Unprocessable(f"'{rule.file_field}' must be a file, not a text field")
    stray = sorted(name for name in parts.files if name != rule.file_field)
    if stray:  # BentoML decodes a stray file as UTF-8 text: a 500 for any binary file
        return Unprocessable(f"only '{rule.file_field}' may be a file, not '{stray[0]}'")
    if rule.max_files is not None and parts.files[rule.file_field] > rule.max_files:
        return Unprocessable(
            f"send exactly one '{rule.file_field}' file; POST /v1/jobs accepts many",
            code="too_many_images",
        )
    for name in rule.single_fields:
        if parts.fields[name] + parts.files[name] > 1:
            return Unprocessable(f"form field '{name}' was sent more than once")
    return None
