"""A batch's source and output URIs: what is accepted, what is refused with which code, and
how manifests and folders list their keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistence.batch_sources import (
    LocalFolder,
    Location,
    client_output,
    manifest_keys,
    output_location,
    parse_location,
)
from visionqueue.core.errors import NotFound, Unprocessable
from visionqueue.core.settings import BatchSettings, S3Settings, Settings


def _settings(tmp_path: Path, roots: list[str], s3: str = "") -> Settings:
    return Settings(
        data_dir=tmp_path,
        batch=BatchSettings(local_roots=roots),
        s3=S3Settings(endpoint=s3),
    )


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("file:///srv/data/../../etc/", "source_not_allowed"),
        ("file:///srv/database/", "source_not_allowed"),  # a sibling sharing the prefix
        ("file:///etc/passwd", "source_not_allowed"),
        ("file://otherhost/srv/data/", "invalid_source"),
        ("s3://bucket/prefix/", "source_not_allowed"),  # no S3 endpoint configured
        ("s3:///prefix/", "invalid_source"),
        ("https://example.com/data/", "invalid_source"),
        ("/srv/data/", "invalid_source"),
    ],
)
def test_refused_sources_name_their_reason(tmp_path: Path, uri: str, code: str) -> None:
    with pytest.raises(Unprocessable) as caught:
        parse_location(uri, _settings(tmp_path, ["/srv/data"]))
    assert caught.value.code == code


def test_accepted_sources(tmp_path: Path) -> None:
    settings = _settings(tmp_path, ["/srv/data"], s3="http://127.0.0.1:9000")
    assert parse_location("file:///srv/data/cams/", settings) == Location(
        "file", "", "/srv/data/cams"
    )
    manifest = parse_location("s3://b/lists/today.jsonl", settings)
    assert manifest == Location("s3", "b", "lists/today.jsonl") and manifest.is_manifest
    assert not parse_location("s3://b/photos/", settings).is_manifest


def test_no_local_roots_means_no_local_sources(tmp_path: Path) -> None:
    with pytest.raises(Unprocessable) as caught:
        parse_location(f"file://{tmp_path}/", _settings(tmp_path, []))
    assert caught.value.code == "source_not_allowed"


def test_the_default_output_under_the_data_dir_is_allowed(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [])
    out = output_location(f"file://{tmp_path}/batches/abc/", settings)
    assert out.path == f"{tmp_path}/batches/abc"
    with pytest.raises(Unprocessable):
        output_location(f"file://{tmp_path}/elsewhere/", settings)


def test_manifest_lines_plain_json_and_objects() -> None:
    lines = ["a.jpg\n", "\n", '"b c.jpg"\n', '{"key": "d/e.png", "label": 3}\n', "  f.jpg  "]
    assert list(manifest_keys(iter(lines))) == ["a.jpg", "b c.jpg", "d/e.png", "f.jpg"]


def test_a_folder_lists_sorted_relative_keys_and_never_leaves_itself(tmp_path: Path) -> None:
    for name in ("b/2.jpg", "b/10.jpg", "a.jpg", "c/d/e.jpg"):
        (tmp_path / "root" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / name).write_bytes(name.encode())
    (tmp_path / "secret.txt").write_text("no")
    folder = LocalFolder(Location("file", "", str(tmp_path / "root")))
    assert list(folder.keys()) == ["a.jpg", "b/10.jpg", "b/2.jpg", "c/d/e.jpg"]
    assert folder.get("c/d/e.jpg") == b"c/d/e.jpg"
    for bad in ("../secret.txt", "missing.jpg", "b"):
        with pytest.raises(NotFound):
            folder.get(bad)


@pytest.mark.parametrize(
    "uri",
    [
        "file://{data}/batches/another-batch/",  # another tenant's default output
        "file://{data}/batches/",
        "file://{data}/batches/x/../another-batch/",
        "s3://vq-images/batches/another-batch/",  # the image bucket, on the S3 endpoint
        "s3://vq-images/",
    ],
)
def test_a_client_cannot_name_the_services_own_store_as_output(tmp_path: Path, uri: str) -> None:
    settings = _settings(tmp_path, [str(tmp_path / "roots")], s3="http://127.0.0.1:9")
    settings.s3.bucket = "vq-images"
    with pytest.raises(Unprocessable) as caught:
        client_output(uri.format(data=tmp_path), settings)
    assert caught.value.code == "invalid_output"
    # the service itself still reads and writes a batch's own default output there
    assert output_location(f"file://{tmp_path}/batches/abc/", settings).path.endswith("/abc")


def test_a_client_output_elsewhere_is_parsed_as_before(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [], s3="http://127.0.0.1:9")
    settings.s3.bucket = "vq-images"
    out = client_output("s3://their-bucket/results", settings)
    assert (out.bucket, out.path) == ("their-bucket", "results/")
