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


def test_a_stop_string_may_begin_in_the_prompt():
    scanner = StopScanner(("\nAnswer:",), context="...thinking|>\n")
    assert scanner.push("Answer: more") == "" and scanner.matched == "\nAnswer:" and scanner.text == ""
    scanner = StopScanner(("\nAnswer:",), context="Question: q\n")
    assert scanner.push("Fine.\nAnswer: x") == "Fine." and scanner.text == "Fine."
    scanner = StopScanner(("\nAnswer:",), context="Question: q\nAnswer: ")  # a stop wholly in the prompt is not one
    assert scanner.push("Silk.") == "Silk." and scanner.matched is None
    scanner = StopScanner(("\nAnswer:",), context="no newline")
    assert scanner.push("Answer: x") == "Answer: x" and scanner.matched is None


def test_loop_detection():
    from preflexor_local.backends.base import repeats_at_end

    paragraph = "The reason why I wrote this response is that it was a good one, and so on. "
    assert repeats_at_end("Intro. " + paragraph * 2)
    assert not repeats_at_end("Intro. " + paragraph)
    assert repeats_at_end("x: " + "yes, no. " * 4) and not repeats_at_end("x: " + "yes, no. " * 3)
    assert not repeats_at_end("1.\n2.\n3.\n4.\n5.\n6.\n")  # counting is not a loop
    # A long paragraph repeated (the demo adapter's round-3 answers): no fixed bound on the period.
    long = (
        "The dentin-enamel junction is a gap between the outer enamel of a tooth and the underlying dentin: calcium phosphate "
        "fills it with cementum, so cracks start there. A crack starts at the inner surface; it is about 0.5 mm wide and 2 mm "
        "thick. The junction fills this gap with calcium phosphate. When a crack begins, the cementum moves outward, filling "
        "the gap and opening up new spaces for further cracking; the enamel is then left intact, allowing more room for "
        "future cracks to form. "
    )
    assert len(long) > 450 and repeats_at_end("Intro. " + long * 2) and not repeats_at_end("Intro. " + long)


def test_loop_detection_is_cheap_on_a_long_text():
    import random
    import time

    from preflexor_local.backends.base import repeats_at_end

    rng = random.Random(0)
    text = " ".join(rng.choice(["silk", "bone", "crack", "the", "of", "tough", "fibre", "and"]) for _ in range(800))
    t0 = time.perf_counter()
    for _ in range(10):
        repeats_at_end(text)
    assert (time.perf_counter() - t0) / 10 < 0.02  # checked every 8 tokens while generating


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab*:x|", max_size=40),
    st.lists(st.sampled_from([("**a**:", "**a**:"), ("ab", "ab"), ("x", "*"), ("a", "\n"), ("", "b:")]), max_size=2),
    st.data(),
)
def test_a_stop_after_counts_once_its_gate_is_generated(text, after, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    scanner = StopScanner(("||",), after=tuple(after))
    out, prev = "", 0
    for cut in [*cuts, len(text)]:
        out += scanner.push(text[prev:cut])
        prev = cut
    out += scanner.flush()
    gated = {s: j for a, s in after if (i := text.find(a)) >= 0 and (j := text.find(s, i + len(a))) >= 0}
    ends = [*gated.values(), *([text.find("||")] if "||" in text else [])]
    assert out == scanner.text == (text[: min(ends)] if ends else text)
    if scanner.restarted:
        assert gated.get(scanner.matched) == len(out)


def test_stops_after_count_generated_text_only():
    scanner = StopScanner((), context="Reasoning:\n**Hypothesis**: old", after=(("**Hypothesis**:", "**Hypothesis**:"),))
    assert scanner.push("**Hypothesis**: new\n\n") == "**Hypothesis**: new\n\n" and scanner.matched is None
    # armed: a tail that may begin the stop is held back until it is decided
    assert scanner.push("**Hyp") == "" and scanner.push("othesis**: again") == ""
    assert scanner.restarted and scanner.text == "**Hypothesis**: new\n\n"


def test_a_stop_after_nothing_is_armed_from_the_start():
    # the rewrite's pre-filled first heading: written once already, so writing it again is a restart
    scanner = StopScanner((), context="**Core Concepts**:", after=(("", "**Core Concepts**:"),))
    assert scanner.push(" silk\n**Core") == " silk\n" and scanner.push(" Concepts**: silk") == ""
    assert scanner.restarted and scanner.text == " silk\n"


def test_a_stop_that_begins_first_wins_over_one_completed_first():
    scanner = StopScanner(("<|/", "|"))
    assert scanner.push("<<|") == "<" and scanner.matched is None  # "|" is whole, but "<|/" may begin before it
    assert scanner.push("/x") == "" and scanner.matched == "<|/" and scanner.text == "<"
    scanner = StopScanner(("<|/", "|"))
    assert scanner.push("<<|") == "<" and scanner.push("x") == "<" and scanner.matched == "|" and scanner.text == "<<"
