"""Streamlit's own renderer in chromium, fed every hostile answer: nothing is fetched, no live
`javascript:`/`data:` link, no raw HTML; code, LaTeX, tables and lists still render.

The sanitizer's unit tests check its output with markdown-it; this checks it with what people
actually run (react-markdown in Streamlit 1.67's frontend), where the two parsers could differ.
The same page without the sanitizer must leak, or the check proves nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest

from harness.servers import Server, ThreadServer
from tests.conftest import REPO
from tests.hostile_answers import hostile_answers

PAGE = REPO / "tests" / "e2e" / "markdown_page.py"
SAFE_HREF = ("http://", "https://", "mailto:")


class Sink(ThreadServer):
    """An HTTP server every hostile URL points at; it records each path asked for."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.first_hit = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                sink.hits.append(self.path)
                sink.first_hit.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


@contextmanager
def rendered(browser, sink: Sink, *, raw: bool):  # noqa: ANN001, ANN201
    """The page with every answer and the math on it, and the requests it made off its origin."""
    server = Server(script=PAGE, env={"EDGECHAT_TEST_SINK": sink.address, "EDGECHAT_TEST_RAW": "1" if raw else "0"})
    url = server.url
    context = browser.new_context()
    try:
        page = context.new_page()
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
        page.goto(url)
        for answer in hostile_answers(sink.address):
            page.get_by_text(answer.marker).first.wait_for(timeout=60_000)
        page.locator(".katex").first.wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")
        yield page, outside
    finally:
        context.close()
        server.stop()


def test_streamlit_renders_every_sanitized_hostile_answer_inert(browser, sink: Sink) -> None:  # noqa: ANN001
    with rendered(browser, sink, raw=False) as (page, outside):
        markdown = page.get_by_test_id("stMarkdownContainer")
        assert sink.hits == [] and outside == []
        for tag in ("img", "iframe", "video", "audio", "picture", "source", "svg image", "object", "embed", "style"):
            assert markdown.locator(tag).count() == 0, tag
        hrefs = page.eval_on_selector_all(  # Streamlit's own heading anchors ("#title") left out
            "[data-testid=stMarkdownContainer] a[href]",
            "as => as.filter(a => !a.closest('[data-testid=stHeaderActionElements]')).map(a => a.getAttribute('href'))",
        )
        assert hrefs and all(h.startswith(SAFE_HREF) for h in hrefs), [h for h in hrefs if not h.startswith(SAFE_HREF)]
        assert page.get_by_text("image: pixel").count() == 1  # the image is a link a person may open
        # the benign answer still renders: highlighted code, KaTeX, a table, a nested list, task boxes
        assert "return x ** 2" in page.locator("pre code").last.inner_text()
        assert page.locator(".katex").count() >= 3
        assert page.locator("table td").count() >= 4
        assert page.locator("li li").count() >= 1
        assert page.locator("input[type=checkbox]").count() == 2


def test_the_same_answers_unsanitized_do_leak(browser, sink: Sink) -> None:  # noqa: ANN001
    """Without the sanitizer Streamlit fetches the pixel: the check above can fail."""
    with rendered(browser, sink, raw=True):
        assert sink.first_hit.wait(30), "the raw page fetched nothing: the sink or the page is broken"
        assert any(h.startswith("/inline-image.png") for h in sink.hits), sink.hits
