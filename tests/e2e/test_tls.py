"""`--tls` with the self-signed certificate it makes: the page, /v1 and /healthz over HTTPS on one
port, the owner cookie Secure, the fingerprint printed at start the one served, and the answer's
Copy button putting the exact Markdown on the clipboard (a secure origin has the clipboard API).
Chromium is told to take the certificate (ignore_https_errors); programs skip verification."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from edgechat.owner import COOKIE_NAME
from harness.browser import person_options
from harness.servers import Server
from tests.e2e.test_browser import ask, wait_answered

FINGERPRINT = re.compile(r"SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})")


@pytest.fixture(scope="module")
def box() -> Iterator[Server]:
    s = Server("--tls", "--temperature", "0", "--max-new-tokens", "48", "--context-length", "1024")
    yield s
    s.stop()


def open_page(browser, box: Server):  # noqa: ANN001, ANN201
    context = browser.new_context(ignore_https_errors=True, **person_options())
    page = context.new_page()
    page.goto(box.url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    return context, page


def last_answer_markdown(page) -> str:  # noqa: ANN001
    """The last answer's raw Markdown as the page's JSON export carries it."""
    with page.expect_download() as download:
        page.get_by_role("button", name="JSON").click()
    doc = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    return doc["messages"][-1]["content"]


def test_printed_fingerprint_is_the_served_certificate_kept_private(box: Server) -> None:
    printed = FINGERPRINT.findall(box.output())
    served = ssl.get_server_certificate(("127.0.0.1", box.port))
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(served)).hexdigest().upper()
    assert printed and printed[-1].replace(":", "") == digest
    folder = box.data_dir / "tls"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {"cert.pem": 0o600, "key.pem": 0o600}


def test_healthz_and_the_openai_client_over_https(box: Server) -> None:
    with urllib.request.urlopen(box.url + "/healthz", context=box.ssl_context(), timeout=30) as r:
        assert r.status == 200 and json.load(r)["alive"] is True
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # a self-signed certificate
        urllib.request.urlopen(box.url + "/healthz", timeout=30)
    client = openai.OpenAI(base_url=box.url + "/v1", api_key="none", max_retries=0,
                           http_client=openai.DefaultHttpxClient(verify=False))  # fmt: skip
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2+2?"}])
    assert "4" in reply.choices[0].message.content


def test_page_over_https_secure_cookie_and_copy_to_clipboard(browser, box: Server) -> None:  # noqa: ANN001
    context, page = open_page(browser, box)
    assert page.evaluate("window.isSecureContext") and page.url.startswith("https://")
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE_NAME)
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    fingerprint = FINGERPRINT.findall(box.output())[-1]
    page.get_by_test_id("stSidebar").get_by_text(fingerprint).wait_for(timeout=30_000)  # in the server panel
    ask(page, "Write a haiku about the sea, then a Python line that prints it.")
    wait_answered(page, 1)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=box.url)
    answer = page.get_by_test_id("stChatMessage").nth(1)
    assert answer.locator("textarea").count() == 1 and not answer.locator("textarea").is_visible()  # no fallback
    answer.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied", exact=True).wait_for(timeout=10_000)
    assert page.evaluate("navigator.clipboard.readText()") == last_answer_markdown(page)
    context.close()
