"""A hostile model server behind the page (--base-url): its answers, its model id and its error
messages reach chromium inert: nothing fetched, no live script link, no raw HTML."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.browser import person_options
from harness.servers import Server
from tests.e2e.test_browser import ask
from tests.e2e.test_markdown_render import SAFE_HREF, Sink
from tests.hostile_answers import hostile_answers
from tests.hostile_server import HostileServer

# The ones the old regex filter let through, and one of each other family (the full set runs
# through Streamlit's renderer in test_markdown_render.py).
CASES = (
    "inline-image", "nested-brackets", "alt-with-newline", "url-on-next-line", "reference-image",
    "after-lone-backtick", "image-in-table", "html-img-inline", "html-details", "javascript-entity",
    "data-image", "protocol-relative-link", "math-with-image", "katex-href", "unclosed-fence",
)  # fmt: skip


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[Sink, HostileServer, Server]]:
    sink = Sink()
    model = HostileServer([a for a in hostile_answers(sink.address) if a.name in CASES], sink.address)
    page_server = Server("--base-url", model.url, "--model-name", model.model_id, "--temperature", "0")
    yield sink, model, page_server
    page_server.stop()
    model.close()
    sink.close()


def test_hostile_answers_model_id_and_errors_render_inert(browser, hostile) -> None:  # noqa: ANN001
    sink, model, server = hostile
    context = browser.new_context(**person_options())
    page = context.new_page()
    outside: list[str] = []
    own = (server.url, f"blob:{server.url}")  # the page's own components load as same-origin blob modules
    page.on("request", lambda r: None if r.url.startswith(own) else outside.append(r.url))
    page.goto(server.url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    for answer in (a for a in hostile_answers(sink.address) if a.name in CASES):
        ask(page, f"case {answer.name}")
        page.get_by_text(answer.marker).first.wait_for(timeout=60_000)
        page.wait_for_function(  # the answer is complete: the input is on again
            "() => !document.querySelector('[data-testid=stChatInputTextArea]').disabled", timeout=60_000
        )
    ask(page, "fail")
    page.get_by_text("the model server failed (500)").wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    assert sink.hits == [] and outside == []
    for tag in ("img", "iframe", "video", "picture", "svg image", "object", "embed", "style"):
        assert page.locator(f"[data-testid=stMain] {tag}, [data-testid=stSidebar] {tag}").count() == 0, tag
    scripts = page.eval_on_selector_all(  # the page's own only: the load line's (edgechat/page/sidebar.py)
        "[data-testid=stMain] script, [data-testid=stSidebar] script",
        "s => s.map(e => e.text.includes('__edgechatLoad'))",
    )
    assert scripts == [True], scripts
    hrefs = page.eval_on_selector_all(
        "[data-testid=stMarkdownContainer] a[href]",
        "as => as.filter(a => !a.closest('[data-testid=stHeaderActionElements]')).map(a => a.getAttribute('href'))",
    )
    assert all(h.startswith(SAFE_HREF) for h in hrefs), [h for h in hrefs if not h.startswith(SAFE_HREF)]
    # The model id's last path part is the title (vLLM ids are org/name), shown as text: "<", ">" and all.
    assert page.locator("h1").first.inner_text().strip() == model.model_id.rsplit("/", 1)[-1]
    context.close()
