"""The sanitizer on every hostile answer: checked on the Markdown it writes AND on the HTML that
markdown-it renders from it, with and without `$` math (Streamlit loads remark-math only when its
heuristic sees math, so the output must be inert both ways). tests/e2e/test_markdown_render.py
does the same in chromium with Streamlit's own renderer."""

from __future__ import annotations

import random
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from edgechat.safe_markdown import _MD, display_url, plain_text, safe_markdown
from tests.hostile_answers import BENIGN, hostile_answers

SINK = "sink.test:9"
NO_MATH = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
RENDERERS = {"math": _MD, "no-math": NO_MATH}
ALLOWED_TAGS = {
    *"p em strong s code pre a ul ol li blockquote hr br table thead tbody tr th td span div".split(),
    *(f"h{i}" for i in range(1, 7)),
}
SAFE = ("http://", "https://", "mailto:")


class Inspect(HTMLParser):
    """Every tag and attribute markdown-it wrote; what a browser could fetch or run is a finding."""

    def __init__(self) -> None:
        super().__init__()
        self.findings: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.findings.append(f"<{tag}>")
        for name, value in attrs:
            if name == "href":
                self.hrefs.append(value or "")
                if not (value or "").startswith(SAFE):
                    self.findings.append(f"href={value}")
            elif name not in ("class", "style", "start"):
                self.findings.append(f"{tag}[{name}]")


def inspect(markdown: str, renderer: str = "math") -> Inspect:
    found = Inspect()
    found.feed(RENDERERS[renderer].render(markdown))
    return found


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("answer", hostile_answers(SINK), ids=lambda a: a.name)
def test_every_hostile_answer_renders_inert(answer, renderer: str) -> None:  # noqa: ANN001
    out = safe_markdown(answer.text)
    found = inspect(out, renderer)
    assert found.findings == [], out
    assert answer.marker in RENDERERS[renderer].render(out)  # the answer is shown, not swallowed


# The variants issue 14 names; each must really be an image (or raw HTML) before sanitizing.
ISSUE_VARIANTS = [
    "inline-image", "nested-brackets", "alt-with-newline", "url-on-next-line", "reference-image",
    "after-lone-backtick", "html-img-block", "html-img-inline", "image-in-link",
]  # fmt: skip


@pytest.mark.parametrize("name", ISSUE_VARIANTS)
def test_the_issue_variants_are_live_before_and_inert_after(name: str) -> None:
    answer = next(a for a in hostile_answers(SINK) if a.name == name)
    assert f"http://{SINK}/{name}" in _MD.render(answer.text).split("<img src=")[1] or "<img" in answer.text
    assert inspect(safe_markdown(answer.text)).findings == []


def test_images_become_links_a_person_may_open() -> None:
    cases = {
        "see ![pixel](http://x.example/p.png) now": "see [image: pixel](<http://x.example/p.png>) now",
        "![a [b] c](http://x.example/p)": "[image: a \\[b\\] c](<http://x.example/p>)",
        "![a\nb](http://x.example/p)": "[image: a b](<http://x.example/p>)",
        "![x](\nhttp://x.example/p)": "[image: x](<http://x.example/p>)",
        "![x][r]\n\n[r]: http://x.example/p": "[image: x](<http://x.example/p>)",
        '![](https://x.example/a.png "t")': "[image: untitled](<https://x.example/a.png>)",
        "[![b](http://x.example/b.png)](https://site.example/)": "[image: b](<https://site.example/>)",
        "![x](data:image/png;base64,AAAA)": "\\[image: x\\]",
        "![x](/relative.png)": "\\[image: x\\]",
    }
    for text, expected in cases.items():
        assert safe_markdown(text) == expected, text
        assert "<img" not in _MD.render(safe_markdown(text))


def test_links_keep_only_web_and_mail_schemes() -> None:
    assert safe_markdown("[ok](https://a.example/x?q=1)") == "[ok](<https://a.example/x?q=1>)"
    assert safe_markdown("[mail](mailto:a@b.example)") == "[mail](<mailto:a@b.example>)"
    assert safe_markdown("<https://a.example/>") == "[https://a.example/](<https://a.example/>)"
    for bad in ("//evil.example/x", "/_stcore/health", "java%0ascript:alert(1)", "ftp://h.example/", "#top"):
        assert safe_markdown(f"[click]({bad})") == "click", bad
    # markdown-it does not even parse these as links: they stay visible, escaped, inert
    assert safe_markdown("[c](jav&#x61;script:alert(1))") == "\\[c\\](javascript\\:alert(1))"
    assert safe_markdown("<javascript:alert(1)>") == "\\<javascript\\:alert(1)>"
    assert safe_markdown("[c](file:///etc/passwd)") == "\\[c\\](file:///etc/passwd)"


def test_raw_html_is_shown_as_text() -> None:
    assert safe_markdown('<img src="http://x.example/p">') == '\\<img src="http://x.example/p">'
    assert safe_markdown("a <b>bold</b> <script>x</script>") == "a \\<b>bold\\</b> \\<script>x\\</script>"
    assert safe_markdown("<div>\n<b>x</b>\n</div>") == "\\<div>\\\n\\<b>x\\</b>\\\n\\</div>"


def test_nothing_after_a_lone_backtick_escapes() -> None:
    out = safe_markdown("a lone ` then ![x](http://x.example/p.png) and <img src=x>")
    assert out == "a lone \\` then [image: x](<http://x.example/p.png>) and \\<img src=x>"
    # a real code span keeps its characters verbatim (code never loads anything)
    assert safe_markdown("`![a](b)` ![c](http://x.example/d)") == "`![a](b)` [image: c](<http://x.example/d>)"


def test_math_is_kept_unless_it_could_be_read_as_a_link() -> None:
    assert safe_markdown("$x^2$ and $$\\frac{a}{b}$$") == "$x^2$ and $$\\frac{a}{b}$$"
    assert safe_markdown("$$\n\\sum_i i\n$$") == "$$\n\\sum_i i\n$$"
    assert safe_markdown("$a<b$") == "$a\\lt b$"  # "<b" never reaches a renderer as a tag
    assert safe_markdown("$5 and $6") == "\\$5 and \\$6"  # prices are not math, as in Streamlit
    assert safe_markdown("$a![x](http://e.example/p)b$").startswith("\\$a!\\[x\\]")
    assert safe_markdown("$\\href{http://e.example}{x}$") == "\\$\\\\href{http://e.example}{x}\\$"


def test_benign_markdown_renders_exactly_as_before() -> None:
    out = safe_markdown(BENIGN)
    assert _MD.render(out) == _MD.render(BENIGN)
    assert "```python\ndef f(x: int) -> int:\n    return x ** 2  # ![not](an image)\n```" in out
    assert "$x^2 + y_1$" in out and "| :-- | --: |" in out and "- [ ] todo" in out
    assert "snake_case_name, 2 \\* 3, a < b, 10:30." in out  # escaped only where it matters


def test_fences_are_longer_than_any_backtick_run_inside() -> None:
    text = "````md\n```\n![x](http://x.example/p)\n```\n````"
    assert safe_markdown(text) == text
    assert safe_markdown("~~~\n`` x ``\n~~~") == "```\n`` x ``\n```"
    assert safe_markdown("``a`b``") == "``a`b``"


@pytest.mark.parametrize("seed", range(4))
def test_random_markdown_soup_is_inert_stable_and_faithful(seed: int) -> None:
    """Seeded soups of Markdown's sharp characters: output inert for both renderers; sanitizing
    twice changes nothing; without images/HTML/math the page shows what the model wrote."""
    atoms = [
        "![", "[", "]", "(", ")", "<", ">", "`", "``", "```", "$", "$$", "\n", "\n\n", " ", "    ",
        "http://s.test/x", "javascript:", "a", "b c", "|", "-", "*", "_", "!", ":", "&#x61;", "&amp;",
        "\\", "~~~", "> ", "- ", "1. ", "2) ", "<img src=http://s.test/i>", "]:", "[r]: http://s.test/r\n",
        "#", "=", "\t", "x^2", ":red[", "{", "}", '"', "www.s.test", "<http://s.test/a>", "<b>", "<!--",
    ]  # fmt: skip
    plain = [a for a in atoms if not set(a) & set("!<$`~") and "javascript" not in a]
    rng = random.Random(seed)
    for _ in range(400):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 30)))
        out = safe_markdown(text)
        for renderer in RENDERERS:
            assert inspect(out, renderer).findings == [], (text, out)
        assert _MD.render(safe_markdown(out)) == _MD.render(out), (text, out)
        benign = "".join(rng.choice(plain) for _ in range(rng.randint(1, 20)))
        want, got = _MD.render(benign), _MD.render(safe_markdown(benign))
        assert got.split() == want.split(), (benign, safe_markdown(benign))


def test_pathological_nesting_is_cut_not_crashed() -> None:
    for text in ("> " * 5000 + "![x](http://e.example/p)", "[" * 20000, "![" * 5000 + "](http://e.example/p)"):
        assert inspect(safe_markdown(text)).findings == []


def test_plain_text_shows_server_strings_as_one_inert_line() -> None:
    line = plain_text("model **x** ![p](http://e.example/p) <b>\n# not a heading :red[x] $y$")
    assert "\n" not in line
    rendered = NO_MATH.renderInline(line)
    assert rendered == "model **x** ![p](http://e.example/p) &lt;b&gt; # not a heading :red[x] $y$"
    assert plain_text("Error from http://bob:hunter2@10.0.0.5:8000/v1: refused") == (
        "Error from http://10.0.0.5:8000/v1: refused"
    )
    assert plain_text("http://u:p@ss@h.lan/v1 and https://key@h.lan/") == "http://h.lan/v1 and https://h.lan/"
    assert plain_text("x" * 500, max_chars=10) == "xxxxxxxxx…"
    assert plain_text("a\x1b[31mred\x00") == "a \\[31mred"


def test_display_url_hides_credentials_and_query() -> None:
    assert display_url("http://user:pa%40ss@host.lan:8000/v1") == "http://host.lan:8000/v1"
    assert display_url("http://user:p@ss@host.lan/v1") == "http://host.lan/v1"
    assert display_url("https://h.example/v1?api_key=SECRET#frag") == "https://h.example/v1"
    assert display_url("http://[::1]:8080/v1") == "http://[::1]:8080/v1"
    assert display_url("http://h.example/v1") == "http://h.example/v1"
