from hypothesis import given, settings
from hypothesis import strategies as st

from preflexor_local.backends.base import StopScanner


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab<|/>x", max_size=40), st.lists(st.sampled_from(["<|/", "ab", "x>", "|"]), max_size=3), st.data())
def test_streamed_text_is_the_text_cut_at_the_first_stop(text, stops, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    scanner = StopScanner(tuple(stops))
    out, prev = "", 0
    for cut in [*cuts, len(text)]:
        out += scanner.push(text[prev:cut])
        prev = cut
    out += scanner.flush()
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    expected = text[: min(hits)] if hits else text
    assert out == expected == scanner.text
    assert (scanner.matched is not None) == bool(hits)
