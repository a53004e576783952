from edgechat.safe_markdown import safe_markdown


def test_images_become_links_and_load_nothing() -> None:
    assert (
        safe_markdown("see ![pixel](http://evil.example/p.png) now")
        == "see [image: pixel](http://evil.example/p.png) now"
    )
    assert safe_markdown('![](https://x.example/a.png "t")') == '[image: untitled](https://x.example/a.png "t")'
    assert (
        safe_markdown("![logo][1]\n\n[1]: http://x.example/l.png") == "[image: logo][1]\n\n[1]: http://x.example/l.png"
    )
    assert "![" not in safe_markdown("a ![b](c) d ![e](f)")


def test_other_markdown_is_untouched() -> None:
    text = "**bold** [link](http://a.example) `code` $x^2$\n```python\nprint('![no](image)')\n```"
    assert (
        safe_markdown("**bold** [link](http://a.example) `code` $x^2$")
        == "**bold** [link](http://a.example) `code` $x^2$"
    )
    assert safe_markdown("<script>alert(1)</script>") == "<script>alert(1)</script>"  # st.markdown escapes HTML
    assert safe_markdown(text) == text  # code keeps its characters
    assert safe_markdown("`![a](b)` ![c](d)") == "`![a](b)` [image: c](d)"
