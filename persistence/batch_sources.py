"""Where a batch reads its objects and writes its result files.

A source is ``s3://BUCKET/PREFIX/`` (every object under the prefix), a manifest
``s3://BUCKET/KEY.txt`` or ``.jsonl`` (one key per line, or ``{"key": ...}`` per line), or
``file:///DIR/`` (also a ``.txt``/``.jsonl`` manifest file) under one of
``VQ_BATCH_LOCAL_ROOTS``. S3 sources use the configured endpoint and credentials
(``VQ_S3_*``). Keys are listed as a stream in a stable order (S3's key order, the
manifest's line order, sorted folder entries), so a restarted planner can skip what it
already planned and no listing is ever held in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from visionqueue.core.errors import NotFound, StorageUnavailable, Unprocessable
from visionqueue.core.settings import Settings

MANIFEST_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Location:
    """A parsed ``s3://`` or ``file://`` URI: a prefix (folder) or one manifest object."""

    scheme: str  # s3 | file
    bucket: str  # S3 bucket; "" for file
    path: str  # S3 key or prefix; absolute folder or file for file://

    @property
    def is_manifest(self) -> bool:
        return self.path.endswith(MANIFEST_SUFFIXES)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.scheme == "s3" else f"file://{self.path}"


class ObjectReader(Protocol):
    def get(self, key: str) -> bytes:
        """The object's bytes; ``NotFound`` if missing."""
        ...


class ObjectWriter(Protocol):
    def put(self, name: str, data: bytes) -> None:
        """Write ``data`` under the location's ``name`` (overwriting)."""
        ...

    def delete(self, names: Iterable[str]) -> None:
        """Remove the location's ``names`` (missing ones are fine), then the emptied folder."""
        ...


def parse_location(uri: str, settings: Settings, *, what: str = "source") -> Location:
    """Parse and authorise ``uri``; 422 ``invalid_source`` / ``source_not_allowed``."""
    code = f"invalid_{what}"
    parts = urlsplit(uri.strip())
    if parts.scheme == "s3":
        if not parts.netloc:
            raise Unprocessable(f"the {what} must name a bucket: s3://BUCKET/PREFIX/", code=code)
        if not settings.s3.endpoint:
            raise Unprocessable(
                f"s3:// {what}s need VQ_S3_ENDPOINT; this deployment stores files locally",
                code=f"{what}_not_allowed",
            )
        return Location("s3", parts.netloc, unquote(parts.path).lstrip("/"))
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise Unprocessable(f"a file:// {what} must be file:///ABSOLUTE/PATH", code=code)
        path = os.path.normpath(unquote(parts.path))
        if not os.path.isabs(path):
            raise Unprocessable(f"a file:// {what} must be absolute", code=code)
        if not any(_inside(path, root) for root in settings.batch.local_roots):
            raise Unprocessable(
                f"file:// {what}s are accepted only under VQ_BATCH_LOCAL_ROOTS",
                code=f"{what}_not_allowed",
            )
        return Location("file", "", path)
    raise Unprocessable(
        f"the {what} must be s3://BUCKET/PREFIX/, s3://BUCKET/KEY.txt|.jsonl or file:///DIR/",
        code=code,
    )


def _inside(path: str, root: str) -> bool:
    root = os.path.normpath(root)
    return os.path.isabs(root) and (path == root or path.startswith(root.rstrip("/") + "/"))


def manifest_keys(lines: Iterator[str]) -> Iterator[str]:
    """The keys of a manifest's lines: plain keys, JSON strings or ``{"key": ...}``."""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith(("{", '"')):
            try:
                value = json.loads(line)
            except ValueError:
                yield line
                continue
            key = value.get("key") if isinstance(value, dict) else value
            if isinstance(key, str) and key:
                yield key
            continue
        yield line


class LocalFolder:
    """A ``file://`` source or output: a folder (or a manifest file) on this host."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.root = Path(location.path)

    def exists(self) -> bool:
        return self.root.is_file() if self.location.is_manifest else self.root.is_dir()

    def keys(self) -> Iterator[str]:
        if self.location.is_manifest:
            with self.root.open(encoding="utf-8") as lines:
                yield from manifest_keys(lines)
            return
        yield from self._walk(self.root, "")

    def _walk(self, folder: Path, prefix: str) -> Iterator[str]:
        # sorted per folder: a stable order without holding more than one folder's names
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise StorageUnavailable("the source folder cannot be read") from exc
        for name in names:
            path = folder / name
            if path.is_dir():
                yield from self._walk(path, f"{prefix}{name}/")
            elif path.is_file():
                yield f"{prefix}{name}"

    def _path(self, key: str) -> Path:
        base = self.root.parent if self.location.is_manifest else self.root
        path = (base / key).resolve()
        if not _inside(str(path), str(base.resolve())):
            raise NotFound("the key leaves the source folder", code="object_missing")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound("the object does not exist", code="object_missing") from exc
        except OSError as exc:
            raise StorageUnavailable("the object cannot be read") from exc

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)  # readers never see half a part file

    def delete(self, names: Iterable[str]) -> None:
        try:
            for name in names:
                (self.root / name).unlink(missing_ok=True)
            if self.root.is_dir() and not any(self.root.iterdir()):
                self.root.rmdir()
        except OSError as exc:
            raise StorageUnavailable("the output folder cannot be cleaned") from exc


class S3Objects:
    """An ``s3://`` source or output on the configured endpoint."""

    PAGE = 1000

    def __init__(self, location: Location, settings: Settings) -> None:
        from minio import Minio

        from persistence.s3_images import _http_client, split_endpoint

        self.location = location
        host, secure = split_endpoint(settings.s3.endpoint)
        self._client = Minio(
            host,
            settings.s3.access_key.get_secret_value(),
            settings.s3.secret_key.get_secret_value(),
            secure=secure,
            region=settings.s3.region,
            http_client=_http_client(30.0, 2),
        )

    def _errors(self) -> _S3Errors:
        return _S3Errors()

    def exists(self) -> bool:
        loc = self.location
        with self._errors():
            if not self._client.bucket_exists(loc.bucket):
                return False
            if loc.is_manifest:
                try:
                    self._client.stat_object(loc.bucket, loc.path)
                except Exception as exc:
                    if getattr(exc, "code", "") in ("NoSuchKey", "NoSuchObject", "NotFound"):
                        return False
                    raise
                return True
            return True  # a prefix: its emptiness is the planner's to find

    def keys(self) -> Iterator[str]:
        loc = self.location
        if loc.is_manifest:
            with self._errors():
                response = self._client.get_object(loc.bucket, loc.path)
            try:
                yield from manifest_keys(_lines(response.stream(256 * 1024)))
            finally:
                response.close()
                response.release_conn()
            return
        with self._errors():
            # minio pages the listing itself (1000 keys a request): a stream, never a list
            for obj in self._client.list_objects(loc.bucket, prefix=loc.path, recursive=True):
                name = obj.object_name or ""
                if name and not obj.is_dir:
                    yield name[len(loc.path) :]

    def _key(self, key: str) -> str:
        loc = self.location
        if loc.is_manifest:
            return key  # manifest keys name objects of the manifest's bucket
        return loc.path + key

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            with self._errors():
                response = self._client.get_object(self.location.bucket, self._key(key))
        except S3Error as exc:
            raise NotFound("the object does not exist", code="object_missing") from exc
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def put(self, name: str, data: bytes) -> None:
        import io

        loc = self.location
        with self._errors():
            self._client.put_object(
                loc.bucket,
                loc.path + name,
                io.BytesIO(data),
                len(data),
                content_type="application/jsonl",
            )

    def delete(self, names: Iterable[str]) -> None:
        from minio.deleteobjects import DeleteObject

        loc = self.location
        with self._errors():
            # one DeleteObjects request per 1000 names; the iterator sends them as it goes
            errors = self._client.remove_objects(
                loc.bucket, (DeleteObject(loc.path + name) for name in names)
            )
            failed = [e for e in errors if e.code not in ("NoSuchKey", "NoSuchObject")]
        if failed:
            raise StorageUnavailable(f"{len(failed)} part files could not be deleted")


class _S3Errors:
    """Map transport failures to ``StorageUnavailable``; missing objects pass as ``S3Error``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        from minio.error import MinioException, S3Error

        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
            return
        if isinstance(exc, (MinioException, OSError)) or type(exc).__module__.startswith("urllib3"):
            raise StorageUnavailable("object storage is unavailable") from exc


def _lines(stream: Iterator[bytes]) -> Iterator[str]:
    rest = b""
    for block in stream:
        rest += block
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")
    if rest:
        yield rest.decode("utf-8", "replace")


def part_name(seq: int) -> str:
    """The name of chunk ``seq``'s part file in a batch's output."""
    return f"part-{seq:05d}.jsonl"


def open_location(location: Location, settings: Settings) -> LocalFolder | S3Objects:
    """The reader/writer of ``location`` (no I/O yet)."""
    if location.scheme == "file":
        return LocalFolder(location)
    return S3Objects(location, settings)


def default_output(batch_id: str, settings: Settings) -> str:
    """The project's own store: ``batches/ID/`` in the image bucket, or in ``VQ_DATA_DIR``."""
    if settings.s3.endpoint:
        return f"s3://{settings.s3.bucket}/batches/{batch_id}/"
    return f"file://{(settings.data_dir / 'batches' / batch_id).resolve()}/"


def client_output(uri: str, settings: Settings) -> Location:
    """Parse an output a client asked for: anywhere allowed except the service's own store.

    The own store (``batches/`` under ``VQ_DATA_DIR``, the image bucket ``VQ_S3_BUCKET``)
    holds every tenant's default outputs and job images: a client that could name it could
    overwrite another batch's part files. Leaving ``output`` out writes there, in the
    batch's own folder.
    """
    parts = urlsplit(uri)
    own_folder = str((settings.data_dir / "batches").resolve())
    in_own_folder = parts.scheme == "file" and _inside(
        os.path.normpath(unquote(parts.path)), own_folder
    )
    in_own_bucket = (
        parts.scheme == "s3" and bool(settings.s3.endpoint) and parts.netloc == settings.s3.bucket
    )
    if in_own_folder or in_own_bucket:
        raise Unprocessable(
            "the output may not be inside the service's own store; leave output out to "
            "write the results there",
            code="invalid_output",
        )
    return output_location(uri, settings)


def output_location(uri: str, settings: Settings) -> Location:
    """Parse an output URI; the default output under ``VQ_DATA_DIR`` is always allowed."""
    parts = urlsplit(uri)
    if parts.scheme == "file" and _inside(
        os.path.normpath(unquote(parts.path)), str((settings.data_dir / "batches").resolve())
    ):
        return Location("file", "", os.path.normpath(unquote(parts.path)))
    location = parse_location(uri, settings, what="output")
    if location.is_manifest:
        raise Unprocessable("the output must be a prefix ending in /", code="invalid_output")
    if location.path and not location.path.endswith("/") and location.scheme == "s3":
        location = Location("s3", location.bucket, location.path + "/")
    return location
