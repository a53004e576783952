"""Model output is shown as Markdown (code, LaTeX) but must not make browsers fetch anything.

Streamlit's `st.markdown` already escapes raw HTML (no `unsafe_allow_html`), but a Markdown image
`![x](http://host/pixel.png)` would still be loaded by every browser showing the answer: a
tracking pixel or a request into the LAN. Images become plain links a person can choose to open.
"""

from __future__ import annotations

import re

# ![alt](url "title") and reference-style ![alt][ref]; the alt text is kept, the "!" dropped.
_INLINE_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(([^)\n]*)\)")
_REFERENCE_IMAGE = re.compile(r"!\[([^\]\n]*)\]\[([^\]\n]*)\]")


# Code is shown verbatim and never loads images, so fenced blocks and inline spans are left alone.
_CODE = re.compile(r"(```[\s\S]*?(?:```|$)|`[^`\n]*`)")


def safe_markdown(text: str) -> str:
    """Markdown with images turned into links outside code; everything else untouched."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # even indices: outside code
        part = _INLINE_IMAGE.sub(lambda m: f"[image: {m.group(1) or 'untitled'}]({m.group(2)})", parts[i])
        parts[i] = _REFERENCE_IMAGE.sub(lambda m: f"[image: {m.group(1) or 'untitled'}][{m.group(2)}]", part)
    return "".join(parts)
