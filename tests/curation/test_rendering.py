from __future__ import annotations

from curation.models import DataSource, ItemOutput
from curation.rendering import diff_segments, output_views, present, scoped_css


def _source(**fields: str) -> DataSource:
    return DataSource(key="k", name="K", **fields)


def test_markdown_is_rendered_with_raw_html_shown_as_text() -> None:
    shown = present(
        _source(display_format="markdown"),
        "**bold** <script>alert(1)</script> [x](javascript:alert(1))",
    )

    html = str(shown.html)
    assert shown.kind == "markdown"
    assert "<strong>bold</strong>" in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert 'href="javascript' not in html


def test_only_web_links_become_links() -> None:
    assert (
        present(_source(display_format="link"), "https://example.org/a").href
        == "https://example.org/a"
    )
    unsafe = present(_source(display_format="link"), "javascript:alert(1)")
    assert (unsafe.kind, unsafe.href) == ("text", "")


def test_lists_and_timelines_of_records() -> None:
    jobs = [
        {
            "title": "Engineer",
            "company": "Acme",
            "start_date": "2020",
            "end_date": "2023",
            "team": "Core",
        }
    ]

    timeline = present(_source(display_format="timeline", type="structured"), jobs)
    listed = present(_source(display_format="list", type="structured"), jobs)
    lines = present(_source(display_format="list"), "• one\n• two\n")

    entry = timeline.entries[0]
    assert (entry.title, entry.subtitle, entry.dates, entry.fields) == (
        "Engineer",
        "Acme",
        "2020 \N{EN DASH} 2023",
        [("Team", "Core")],
    )
    assert listed.entries[0].fields[0] == ("Title", "Engineer")
    assert [e.text for e in lines.entries] == ["one", "two"]


def test_chat_sources_become_messages() -> None:
    shown = present(
        _source(type="chat"), [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    )

    assert shown.messages == [("user", "hi")]


def test_empty_values_say_so() -> None:
    assert present(_source(), None).kind == "empty"
    assert present(_source(), "").kind == "empty"


def test_word_differences_are_marked() -> None:
    assert diff_segments("the cat sat", "the dog sat") == [
        ("the ", False),
        ("dog", True),
        (" sat", False),
    ]


def test_outputs_after_the_first_are_compared_with_it() -> None:
    first = ItemOutput(model="a", text="yes it is")
    second = ItemOutput(model="b", text="no it is")
    failed = ItemOutput(model="c", error={"code": "x", "message": "y"})

    views = output_views([first, second, failed])

    assert views[0].segments == [("yes it is", False)]
    assert views[1].segments == [("no", True), (" it is", False)]
    assert views[2].segments == [("", False)]


def test_custom_css_is_scoped_and_cannot_end_the_style_element() -> None:
    css = scoped_css("a > b { color: red } </style><script>x</script>")

    assert css.startswith("@scope (.conquest-item) {")
    assert "<" not in css
    assert "a > b" in css
