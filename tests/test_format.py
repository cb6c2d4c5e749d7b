import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preflexor_local.errors import UsageError
from preflexor_local.format import StreamParser, ThinkingFormat, parse

F = ThinkingFormat()
TS, TE, RS, RE = F.tags


def test_thinking_reflection_answer():
    p = parse(f"{TS}\nsteps\n{TE}\n{RS}check{RE}\nThe answer.")
    assert (p.thinking, p.thinking_closed) == ("steps", True)
    assert (p.reflection, p.reflection_closed) == ("check", True)
    assert p.answer == "The answer."


def test_no_tags_is_all_answer():
    p = parse("  just text  ")
    assert p.thinking is None and p.reflection is None and not p.thinking_closed
    assert p.answer == "just text"


def test_truncated_thinking_gives_empty_answer():
    p = parse(f"{TS} half a thou")
    assert p.thinking == "half a thou" and p.thinking_closed is False and p.answer == ""


def test_prefilled_start_end_only():
    p = parse(f"reasoning here{TE}answer")
    assert p.thinking == "reasoning here" and p.thinking_closed and p.answer == "answer"


def test_answer_after_last_closing_tag_and_blocks_joined():
    p = parse(f"{TS}a{TE}first{TS}b{TE}second")
    assert p.thinking == "a\n\nb"
    assert p.answer == "second"


def test_repeated_opening_tag_ignored():
    p = parse(f"{TS}a{TS}b{TE}ans")
    assert p.thinking == "ab" and p.answer == "ans"


def test_other_section_opening_ends_thinking_unclosed():
    p = parse(f"{TS}t{RS}r{RE}ans")
    assert p.blocks[0].closed is False and p.reflection == "r" and p.answer == "ans"
    assert p.thinking_closed is False


def test_stray_closing_tag_ends_open_section():
    p = parse(f"{TS}t{RE}ans")
    assert p.thinking == "t" and p.thinking_closed is False and p.answer == "ans"


def test_reference_sentinel_text_is_harmless():
    assert parse(f"{TS}x{TE}NONE of this breaks").answer == "NONE of this breaks"


def test_think_preset():
    f = ThinkingFormat.preset("think")
    p = parse("<think>hmm</think>42", f)
    assert p.thinking == "hmm" and p.answer == "42"


def test_invalid_tags_refused():
    with pytest.raises(UsageError):
        ThinkingFormat("<t>", "<t>x", "<r>", "</r>")
    with pytest.raises(UsageError):
        ThinkingFormat.preset("nope")


def test_stream_pieces_never_split_a_tag():
    sp = StreamParser(F)
    pieces = sp.feed("hello <|thin") + sp.feed("king|>deep") + sp.feed(f"{TE}done")
    assert all("<|" not in p.text for p in pieces)
    assert [(p.channel, p.text) for p in pieces] == [("outside", "hello "), ("thinking", "deep"), ("outside", "done")]


_atoms = st.sampled_from([TS, TE, RS, RE, "a", "b c", "\n", "<", "|", "<|", "thinking", "/", "|>", "é", "🙂", " "])


@settings(max_examples=300, deadline=None)
@given(st.lists(_atoms, max_size=30), st.data())
def test_any_chunking_gives_the_same_sections(atoms, data):
    text = "".join(atoms)
    whole = parse(text)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    sp = StreamParser(F)
    streamed_text = ""
    prev = 0
    for cut in [*cuts, len(text)]:
        for piece in sp.feed(text[prev:cut]):
            streamed_text += piece.text
        prev = cut
    assert sp.finish() == whole
    stripped = text
    for tag in F.tags:
        stripped = stripped.replace(tag, "")
    # what streamed is the text without its tags, less a held-back tail that could still start a tag
    assert stripped.startswith(streamed_text)
    rest = stripped[len(streamed_text) :]
    assert rest == "" or any(tag.startswith(rest) and rest != tag for tag in F.tags)


def test_answers_stop_at_the_tags_shared_opening():
    # PRefLexOR's tags share "<|": a half-formed tag ("<|/thnkmkj|]") ends an answer as a whole one does
    assert ThinkingFormat().answer_stops == ("<|",)
    # "<think>" tags share only "<", which prose uses: the opening tags, exactly
    assert ThinkingFormat.preset("think").answer_stops == ("<think>", "<reflect>")
    assert ThinkingFormat("[[t]]", "[[/t]]", "[[r]]", "[[/r]]").answer_stops == ("[[",)


def test_section_headings_are_the_bold_line_openings_each_once():
    from preflexor_local.format import section_headings

    thinking = "**Core Concepts**: silk\n\n  **Reasoning Steps**:\n1. a **bold**: inline\n**Hypothesis**: tough\n**Core Concepts**: again"
    assert section_headings(thinking) == ("**Core Concepts**:", "**Reasoning Steps**:", "**Hypothesis**:")
    assert section_headings("Silk is tough because its crystals bear load.") == ()


def test_a_rewrite_opens_with_the_first_heading_and_stops_at_a_heading_written_again_or_past_the_last_section():
    from preflexor_local.format import RewriteFrame, rewrite_frame

    # the opening heading is pre-filled, so writing it again is a restart from the start; a one-line last section
    # ends at its line end
    frame = rewrite_frame("**Core Concepts**: silk\n**Hypothesis**: tough")
    assert frame == RewriteFrame("**Core Concepts**:", (("", "**Core Concepts**:"), ("**Hypothesis**:", "**Hypothesis**:"), ("**Hypothesis**:", "\n")))
    # a last section of several lines (or a bare heading line) ends at the next line that opens in bold
    for last in ("**Hypothesis**: tough\nand light", "**Hypothesis**:\ntough"):
        assert rewrite_frame("**Core Concepts**: silk\n" + last).stops_after[-1] == ("**Hypothesis**:", "\n**")
    # a thinking that does not open with a heading is not opened for the rewrite
    assert rewrite_frame("Silk is a fibre.\n**Hypothesis**: tough") == RewriteFrame("", (("**Hypothesis**:", "**Hypothesis**:"), ("**Hypothesis**:", "\n")))
    # one heading, pre-filled: its line end is armed from the start
    assert rewrite_frame("  **Hypothesis**: tough").stops_after == (("", "**Hypothesis**:"), ("", "\n"))
    assert rewrite_frame("no headings") == RewriteFrame("", ())
