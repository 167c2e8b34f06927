"""The web page's files: a strict CSP they can live with, no HTML built from data, shipped."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pathspec
import yaml

from visionqueue.api.webui import ASSETS, UI_DIR, content_security_policy
from visionqueue.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(UI_DIR.glob("*.js"))


class PageShape(HTMLParser):
    """Collect what CSP and accessibility care about in index.html."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script = False
        self.styles_or_handlers: list[str] = []
        self.urls: list[str] = []
        self.controls: list[str] = []
        self.labelled: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in found:
            if name == "style" or name.startswith("on"):
                self.styles_or_handlers.append(f"<{tag} {name}>")
        if tag == "style":
            self.styles_or_handlers.append("<style>")
        if tag == "script":
            self.scripts.append(found)
            self._in_script = True
        for name in ("src", "href", "action"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if tag in ("input", "select", "textarea"):
            self.controls.append(str(found.get("id")))
        if tag == "label" and found.get("for"):
            self.labelled.add(str(found["for"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


def page_shape() -> PageShape:
    parser = PageShape()
    parser.feed((UI_DIR / "index.html").read_text(encoding="utf-8"))
    return parser


def test_csp_forbids_inline_script_eval_and_other_hosts() -> None:
    csp = content_security_policy(Settings())
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["img-src"] == "'self' blob:"
    assert "unsafe" not in csp


def test_csp_lets_job_images_come_from_the_s3_endpoint_that_signs_them() -> None:
    settings = Settings.model_validate(
        {"s3": {"endpoint": "http://minio:9000", "public_endpoint": "https://img.example.com/x"}}
    )
    assert "img-src 'self' blob: https://img.example.com;" in content_security_policy(settings)


def test_index_html_has_no_inline_code_and_only_own_urls() -> None:
    page = page_shape()
    assert not page.inline_script
    assert page.styles_or_handlers == []
    assert [s.get("src") for s in page.scripts] == ["/ui/app.js"]
    assert all(s.get("type") == "module" for s in page.scripts)
    for url in page.urls:
        assert url.startswith(("/", "#")) and not url.startswith("//"), url


def test_every_control_has_a_label() -> None:
    page = page_shape()
    assert page.controls, "no controls found"
    assert set(page.controls) <= page.labelled, set(page.controls) - page.labelled


def test_scripts_never_build_html_or_eval() -> None:
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setTimeout\(\s*['\"`]|https?://"
    )
    assert SCRIPTS
    for script in SCRIPTS:
        found = forbidden.findall(script.read_text(encoding="utf-8"))
        assert found == [], (script.name, found)
    assert "http" not in (UI_DIR / "app.css").read_text(encoding="utf-8")  # no web fonts


def test_every_file_is_served_and_shipped() -> None:
    files = {p.name for p in UI_DIR.iterdir() if p.is_file()}
    assert files - {"index.html"} == set(ASSETS)
    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text(encoding="utf-8"))["include"]
    spec = pathspec.PathSpec.from_lines("gitwildmatch", include)
    for name in files:
        assert spec.match_file(f"visionqueue/api/ui/{name}"), name
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "ui/*" in pyproject["tool"]["setuptools"]["package-data"]["visionqueue.api"]
