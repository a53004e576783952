"""Model text shown as Markdown (code, LaTeX, tables, lists) that cannot make a browser fetch or run.

Threat model. The model's answer is attacker-controlled: a prompt injection in the user's own
paste, a hostile OpenAI-compatible server behind `--base-url`, or a model that was told to. The
page shows answers with `st.markdown` WITHOUT `unsafe_allow_html`. What Streamlit 1.67's
frontend then does (read in its bundle, `static/js/StreamlitMarkdown.*.js`): react-markdown with
remark-gfm, remark-math (loaded only when a `$…$` heuristic matches), remark-directive
(`:red[…]`), remark-emoji; raw HTML reaches the page as TEXT (rehype-raw is only loaded with
`unsafe_allow_html`); rehype-katex runs with its default `trust: false` (no `\\href`,
`\\includegraphics`). Its `urlTransform` REPLACES react-markdown's scheme allowlist with a
check that only blocks `javascript:`/`vbscript:` (control characters stripped first), so
`data:`, `file:`, relative and protocol-relative URLs pass, and `<img>` from `![](…)` is live.
The attacks left are therefore: (1) an image in any Markdown syntax (inline, nested brackets,
newlines in alt or before the URL, reference-style, inside link text) makes every browser that
shows the answer fetch a URL carrying chat text — a tracking pixel or a request into the LAN;
(2) links to anything but the web or mail (`data:`, `file:`, `//host`, entity-encoded schemes);
(3) raw HTML, which is harmless while Streamlit keeps rendering it as text, but is escaped here so
no later change (or another renderer: an exported file in a previewer) makes it live.

Approach: parse with markdown-it (CommonMark + GFM tables/strikethrough + `$` math, the same
constructs Streamlit renders), then WRITE the Markdown again from the syntax tree. Text is
backslash-escaped wherever a character could start a construct, so the output contains only the
constructs emitted here: links to http(s)/mailto, images turned into `[image: alt](url)` links
(http(s) only; otherwise the text `[image: alt]`), code spans and fences sized to their content,
math whose content could not form a link or image even if a renderer did not see it as math.
Safety therefore does not depend on react-markdown agreeing with markdown-it on structure:
wherever the two might disagree (table cells, math heuristics), the text is inert either way.
If parsing fails, the whole text is escaped (fail closed).
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode
from mdit_py_plugins.dollarmath import dollarmath_plugin

# remark-math and Streamlit's math heuristic: `$x$` only without inner spaces at the ends and not
# followed by a digit, so "$5 and $6" stays text (escaped), as Streamlit shows it.
_MD = (
    MarkdownIt("commonmark", {"html": True})
    .enable(["table", "strikethrough"])
    .use(dollarmath_plugin, allow_labels=False, allow_space=False, allow_digits=False, double_inline=True)
)

SAFE_SCHEMES = ("http://", "https://", "mailto:")
_ALWAYS = set("\\`*[]$|~")  # can open or close a construct anywhere
_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_ORDERED = re.compile(r"\d{1,9}[.)]")
# In math content, what could still form a link, an image or a reference if a
# renderer parsed it as Markdown (no remark-math loaded, or a different idea of where it ends),
# and KaTeX's commands that load or link URLs (off while KaTeX's `trust` stays false).
_MATH_UNSAFE = re.compile(r"[$`]|!\[|\]\(|\]:|\]\[|\n\s*\n|\\(href|url|includegraphics|html[A-Za-z]*)\b")
_MATH_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # "a<b": `\lt` to KaTeX, never the start of a tag
_TASK = re.compile(r"\\\[([ xX])\\\] ")
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@")  # up to the LAST "@": p@ss too


@lru_cache(maxsize=256)  # the page redraws the whole history on every rerun: ~2.5 ms a KB each
def safe_markdown(text: str) -> str:
    """Markdown for `st.markdown`: same look, but no image, raw HTML or non-web link survives."""
    try:
        return "\n".join(_blocks(SyntaxTreeNode(_MD.parse(text)).children, tight=False))
    except Exception:  # a parser bug must not let the raw text through
        return "\n".join(_text_lines(text))


def plain_text(value: object, *, max_chars: int = 300) -> str:
    """Markdown that shows `value` as one line of plain text: for strings from a model server
    (model id, health line, error text) put into `st.caption`, `st.error`, `st.title` or an
    f-string of Markdown. Credentials in URLs are removed, control characters and line breaks
    become spaces, and it is cut to `max_chars` with "…"."""
    s = _CREDENTIALS.sub(r"\1", str(value))
    s = " ".join("".join(c if c.isprintable() else " " for c in s).split())
    if len(s) > max_chars:
        s = s[: max_chars - 1].rstrip() + "…"
    return _escape(s, at_start=True, heading=True)


def display_url(url: str) -> str:
    """`url` as it may be shown to everyone: no `user:password@`, no query or fragment (where API
    keys hide). Plain text: pass it through `plain_text` before putting it into Markdown."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return _CREDENTIALS.sub(r"\1", url.split("?")[0])
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# ---- blocks: each returns the lines it occupies, containers prefix their children's lines ----


def _blocks(nodes: list[SyntaxTreeNode], *, tight: bool) -> list[str]:
    out: list[str] = []
    for node in nodes:
        lines = _block(node)
        if lines:
            if out and not tight:
                out.append("")
            out += lines
    return out


def _block(node: SyntaxTreeNode) -> list[str]:
    kind = node.type
    if kind == "paragraph":
        return _inline(node.children[0].children).split("\n")
    if kind == "heading":
        level = int(node.tag[1])
        body = _inline(node.children[0].children, at_start=False, heading=True).replace("\n", " ")
        return [f"{'#' * level} {body}".rstrip()]
    if kind == "blockquote":
        return [f"> {line}" if line else ">" for line in _blocks(node.children, tight=False)] or [">"]
    if kind in ("bullet_list", "ordered_list"):
        return _list(node)
    if kind in ("fence", "code_block"):
        return _fence(node.content, node.info)
    if kind == "hr":
        return ["***"]
    if kind == "table":
        return _table(node)
    if kind == "math_block":
        content = node.content.strip("\n")
        math = _math(content, table=False)
        return ["$$", *math.split("\n"), "$$"] if math else _text_lines(f"$$\n{content}\n$$")
    if kind == "html_block":
        return _text_lines(node.content)
    if node.children:  # a construct this module does not know: keep what it contains, as text
        return _blocks(node.children, tight=False)
    return _text_lines(node.content)


def _text_lines(raw: str) -> list[str]:
    """Raw text (an HTML block, rejected math) as escaped paragraphs keeping its line breaks."""
    paragraphs = [p for p in re.split(r"\n\s*\n", re.sub(r"\r\n?", "\n", raw).strip()) if p.strip()]
    out: list[str] = []
    for p in paragraphs:
        lines = [_escape(line.strip(), at_start=True) for line in p.split("\n") if line.strip()]
        out += ([""] if out else []) + _hard_break(lines)
    return out


def _hard_break(lines: list[str]) -> list[str]:
    return [line + "\\" for line in lines[:-1]] + lines[-1:]


def _list(node: SyntaxTreeNode) -> list[str]:
    items = node.children
    tight = all(c.hidden for item in items for c in item.children if c.type == "paragraph")
    out: list[str] = []
    for item in items:
        marker = f"{item.info}{item.markup}" if node.type == "ordered_list" else item.markup
        body = _blocks(item.children, tight=tight)
        if body and item.children[0].type == "paragraph":
            body[0] = _TASK.sub(r"[\1] ", body[0], count=1) if _TASK.match(body[0]) else body[0]
        pad = " " * (len(marker) + 1)
        lines = [f"{marker} {body[0]}" if body else marker] + [pad + line if line else "" for line in body[1:]]
        if out and not tight:
            out.append("")
        out += lines
    return out


def _fence(content: str, info: str) -> list[str]:
    """A backtick fence longer than any backtick run inside, so the code cannot close it."""
    fence = "`" * max(3, _longest_run(content, "`") + 1)
    words = info.split()
    lang = re.sub(r"[^A-Za-z0-9_+#.-]", "", words[0]) if words else ""
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [fence + lang, *lines, fence]


def _table(node: SyntaxTreeNode) -> list[str]:
    rows = [tr for part in node.children for tr in part.children]
    out = []
    for i, tr in enumerate(rows):
        cells = [
            _inline(cell.children[0].children if cell.children else [], at_start=False, table=True)
            for cell in tr.children
        ]
        out.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
        if i == 0:
            align = [str(cell.attrs.get("style", "")) for cell in tr.children]
            out.append("|" + "|".join(_ALIGN.get(a, " --- ") for a in align) + "|")
    return out


_ALIGN = {"text-align:left": " :-- ", "text-align:right": " --: ", "text-align:center": " :-: "}


# ---- inline ----


def _inline(nodes: list[SyntaxTreeNode], *, at_start: bool = True, heading: bool = False, table: bool = False) -> str:
    out: list[str] = [] if at_start else ["x"]  # a non-newline sentinel: not at a line start
    _emit(nodes, out, in_link=False, heading=heading, table=table)
    return "".join(out if at_start else out[1:])


def _emit(nodes: list[SyntaxTreeNode], out: list[str], *, in_link: bool, heading: bool, table: bool) -> None:
    for n in nodes:
        at_start = not out or out[-1].endswith("\n")
        kind = n.type
        if kind == "text":
            out.append(_escape(n.content, at_start=at_start, heading=heading))
        elif kind == "softbreak":
            out.append("\n")
        elif kind == "hardbreak":
            out.append("\\\n")
        elif kind in ("em", "strong", "s"):
            out.append(n.markup)
            _emit(n.children, out, in_link=in_link, heading=heading, table=table)
            out.append(n.markup)
        elif kind == "code_inline":
            out.append(_code_span(n.content.replace("|", "\\|") if table else n.content))
        elif kind in ("math_inline", "math_inline_double"):
            delim = "$$" if kind == "math_inline_double" else "$"
            if math := _math(n.content, table=table):
                out.append(delim + math + delim)
            else:
                out.append(_escape(delim + n.content + delim, at_start=at_start, heading=heading))
        elif kind == "link":
            href = _safe_href(str(n.attrs.get("href", "")))
            if href is None or in_link:
                _emit(n.children, out, in_link=in_link, heading=heading, table=table)
            else:
                out.append("[")
                start = len(out)
                _emit(n.children, out, in_link=True, heading=heading, table=table)
                if not "".join(out[start:]).strip():  # empty link text: show where it goes
                    out.append(_escape(href, at_start=False))
                out.append(f"](<{href}>)")
        elif kind == "image":
            alt = _escape("image: " + (_plain(n.children).strip() or "untitled"), at_start=False)
            src = _safe_href(str(n.attrs.get("src", "")))
            if in_link:
                out.append(alt)
            elif src is not None and not src.startswith("mailto:"):
                out.append(f"[{alt}](<{src}>)")
            else:
                out.append(f"\\[{alt}\\]")
        else:  # html_inline and anything unknown: its characters, shown as text
            raw = n.content if not n.children else _plain(n.children)
            lines = [line.strip() for line in raw.split("\n")]
            out.append(
                "\n".join(_escape(line, at_start=at_start or i > 0, heading=heading) for i, line in enumerate(lines))
            )


def _plain(nodes: list[SyntaxTreeNode]) -> str:
    """The characters a reader sees in inline content (image alt text, unknown constructs)."""
    parts = []
    for n in nodes:
        if n.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif n.children:
            parts.append(_plain(n.children))
        else:
            parts.append(n.content)
    return "".join(parts)


def _math(content: str, *, table: bool) -> str | None:
    """Math content to write as it is, or None where it must be shown as text instead."""
    if not content.strip() or _MATH_UNSAFE.search(content):
        return None
    content = _MATH_TAG.sub(r"\\lt ", content)
    return content.replace("|", "\\|") if table else content


def _safe_href(url: str) -> str | None:
    """The URL if it is http(s) or mailto and has nothing that could end `<…>` early."""
    if url.lower().startswith(SAFE_SCHEMES) and not any(c in url for c in "<>\\") and url.isprintable():
        return url if " " not in url else None
    return None


def _code_span(content: str) -> str:
    """Backticks of a length that does not occur in the content; padded where CommonMark strips."""
    runs = {len(r) for r in re.findall(r"`+", content)}
    n = next(k for k in range(1, len(runs) + 2) if k not in runs)
    pad = (
        " "
        if content[:1] == "`" or content[-1:] == "`" or (content[:1] == content[-1:] == " " and content.strip())
        else ""
    )
    return f"{'`' * n}{pad}{content}{pad}{'`' * n}"


def _longest_run(s: str, char: str) -> int:
    return max((len(r) for r in re.findall(re.escape(char) + "+", s)), default=0)


def _escape(s: str, *, at_start: bool, heading: bool = False) -> str:
    """Backslashes before every character of `s` that could start or end a construct here, and
    only those, so exported files stay readable. `at_start`: `s` begins a line."""
    if at_start:
        s = s.lstrip(" \t")
    out = []
    n = len(s)
    for i, c in enumerate(s):
        nxt = s[i + 1] if i + 1 < n else ""
        prev = s[i - 1] if i else ""
        if c in _ALWAYS:
            esc = True
        elif c == "_":  # snake_case stays readable: intraword "_" never opens or closes
            esc = not (prev.isalnum() and nxt.isalnum())
        elif c in "<&":  # tags, autolinks, entities
            esc = nxt == "" or nxt.isascii() and (nxt.isalpha() or nxt in "/!?#")
        elif c == ":":  # remark-directive: `:name[…]{…}`
            esc = nxt == ":" or nxt.isascii() and nxt.isalpha()
        elif c == "!":  # "!" before a link this module writes would make it an image
            esc = nxt == ""
        elif c == "#":
            esc = heading
        else:
            esc = False
        out.append("\\" + c if esc else c)
    if at_start and s:
        if s[0] in _PUNCT and not out[0].startswith("\\"):
            out[0] = "\\" + s[0]
        elif m := _ORDERED.match(s):
            out[m.end() - 1] = "\\" + s[m.end() - 1]
    return "".join(out)
