"""/docs and /redoc work offline: every script, style and icon the pages name is served by the app itself."""

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from aisys.serving.routes import build_fastapi_app
from tests.unit.test_api import DEFAULT_K, MAX_K, make_service


class _Assets(HTMLParser):
    """The URLs a page loads: <script src>, <link href>, <img src>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if tag in ("script", "link", "img") and attrs.get(key):
                self.urls.append(attrs[key])


def assets_of(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


@pytest.fixture
def client() -> TestClient:
    return TestClient(build_fastapi_app(make_service(), default_k=DEFAULT_K, max_k=MAX_K))


@pytest.mark.parametrize("page, needed", [
    ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
    ("/redoc", {"redoc.standalone.js"}),
])
def test_docs_pages_load_every_asset_from_the_app_itself(client, page, needed):
    resp = client.get(page)
    assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
    html = resp.text
    # No external host anywhere in the page: no CDN, no Google Fonts.
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html), re.findall(r"https?://\S+", html)
    urls = assets_of(html)
    assert needed <= {url.rsplit("/", 1)[-1] for url in urls}, urls
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url  # the real bundle, not an error page
    assert "/openapi.json" in html
    assert client.get("/openapi.json").json()["info"]["title"] == "aisys recommender"


def test_the_swagger_bundle_is_javascript_and_the_css_is_css(client):
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    css = client.get("/docs-assets/swagger-ui.css")
    assert "javascript" in js.headers["content-type"] and "SwaggerUIBundle" in js.text[:2000]
    assert css.headers["content-type"].startswith("text/css")


def test_without_api_docs_the_pages_and_assets_are_absent():
    client = TestClient(build_fastapi_app(make_service(), default_k=DEFAULT_K, max_k=MAX_K, api_docs=False),
                        raise_server_exceptions=False)
    for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
        assert client.get(path).status_code == 404, path
