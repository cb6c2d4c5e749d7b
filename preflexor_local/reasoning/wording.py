"""The engine's prompt wording (our own), in one place so it can be read and tuned (``prompt.py`` renders chat templates; this is what the prompts say).

Templates use ``str.replace`` on ``{name}`` markers, never ``str.format``, so
braces in questions, retrieved context or model output cannot break a prompt.
"""

from __future__ import annotations

from ..format import ThinkingFormat

CRITIC_SYSTEM = "You review reasoning with care and precision, and you follow instructions exactly."
INTEGRATOR_SYSTEM = "You merge several drafts of an answer into one answer that is accurate, complete and clear."

CRITIQUE = """Below are a question and the reasoning someone wrote while working on it.

Question:
{question}

Reasoning:
{thinking}

Review this reasoning. Name its gaps, mistakes, unsupported steps and missing considerations, and for each one say concretely how to fix it. Reply with the review only, and end it with one line: "Verdict: fix." if anything needs fixing, else "Verdict: nothing to fix."."""

REWRITE = """Below are a piece of reasoning and feedback on it.

Reasoning:
{thinking}

Feedback:
{feedback}

Rewrite the reasoning so that it acts on every point of the feedback. Keep its structure and headings, keep what was already right, and do not write the final answer. Reply with the rewritten reasoning only."""

INTEGRATE = """Here are a question and {n} draft answers to it; each draft came from reasoning that had been reviewed and improved.

Question:
{question}

{answers}

Write one final answer that keeps every correct and useful point of the drafts, settles any disagreement in favour of the best-supported claim, and drops repetition. Begin directly with the answer; do not restate the question or mention the drafts."""

GROUNDED_CRITIQUE = """Below are a question, numbered passages of evidence, and the reasoning someone wrote while working on the question.

Question:
{question}

Passages:
{passages}

Reasoning:
{thinking}

Check each claim of the reasoning against the passages. For each claim a passage contradicts, each claim no passage supports, and each fact a passage gives that the reasoning misses, say what the passage states, cite it as [n], and say how to fix the reasoning. Reply with the review only, and end it with one line: "Verdict: fix." if anything needs fixing, else "Verdict: nothing to fix."."""

GROUNDED_REWRITE = """Below are numbered passages of evidence, a piece of reasoning, and feedback on it.

Passages:
{passages}

Reasoning:
{thinking}

Feedback:
{feedback}

Rewrite the reasoning so that it acts on every point of the feedback: keep the claims the passages support, correct the ones they contradict, and add what they show is missing, citing them as [n]. Keep its structure and headings, and do not write the final answer. Reply with the rewritten reasoning only."""

GROUNDED_INTEGRATE = """Passages the drafts were written from:
{passages}

{prompt} Where the drafts disagree, the passages decide; cite them as [n]."""

CONTEXT = """Context:
{chunks}

Use the context where it is relevant and cite it as [n].

{question}"""


def fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def critique_prompt(question: str, thinking: str) -> str:
    return fill(CRITIQUE, question=question, thinking=thinking)


def rewrite_prompt(thinking: str, feedback: str) -> str:
    return fill(REWRITE, thinking=thinking, feedback=feedback)


def passages_block(passages) -> str:
    """Numbered evidence, one per line: ``[n] (source) text`` (numbered in order from 1)."""
    return "\n".join(f"[{i}] ({p.get('source', '?')}) {p['text'].strip()}" for i, p in enumerate(passages, 1))


def grounded_critique_prompt(question: str, thinking: str, passages) -> str:
    return fill(GROUNDED_CRITIQUE, question=question, passages=passages_block(passages), thinking=thinking)


def grounded_rewrite_prompt(thinking: str, feedback: str, passages) -> str:
    return fill(GROUNDED_REWRITE, passages=passages_block(passages), thinking=thinking, feedback=feedback)


def integrate_prompt(question: str, answers: list[str], passages=()) -> str:
    """With ``passages`` (the context the drafts cite as [n]), they are shown, numbered as the drafts saw them."""
    blocks = "\n\n".join(f"Draft {i}:\n{a.strip()}" for i, a in enumerate(answers, 1))
    prompt = fill(INTEGRATE, n=str(len(answers)), question=question, answers=blocks)
    return fill(GROUNDED_INTEGRATE, passages=passages_block(passages), prompt=prompt) if passages else prompt


def with_context(question: str, chunks: list[dict]) -> str:
    if not chunks:
        return question
    return fill(CONTEXT, chunks=passages_block(chunks), question=question)


# One worked example, used to show base models (plain completion format) each task once.
_EX_QUESTION = "Why does a wet paper towel tear more easily than a dry one?"
_EX_THINKING = (
    "Paper is a network of cellulose fibres held together by hydrogen bonds between fibres. "
    "Water molecules compete for those bonds, so the fibres bond to water instead of to each other. "
    "The fibres themselves stay strong; the joints between them weaken."
)
_EX_WEAK_THINKING = "Paper is made of fibres. Water makes things soft, so wet paper is weaker."
_EX_CRITIQUE = (
    "1. It never says what holds the fibres together: name the hydrogen bonds between cellulose fibres.\n"
    '2. "Water makes things soft" is vague: explain that water molecules take over those bonds.\n'
    "3. It misses that the fibres stay strong and the network fails at its joints.\n"
    "Verdict: fix."
)
_EX_ANSWER = (
    "Water breaks the hydrogen bonds that hold the cellulose fibres to one another, so the fibre network "
    "comes apart at its joints under a much smaller load, even though each fibre is still strong."
)
_EX_DRAFTS = [
    "Water weakens the bonds between the paper's fibres, so it tears easily.",
    "The cellulose fibres stay strong, but water takes over the hydrogen bonds that join them.",
]


def format_example(fmt: ThinkingFormat) -> list[dict[str, str]]:
    """A one-shot demonstration of the thinking format, for base models that were never taught it.

    Base models continue documents; one worked example is what makes them
    close the thinking section and then answer.
    """
    return [
        {"role": "user", "content": fmt.question_with_cue(_EX_QUESTION)},
        {"role": "assistant", "content": f"{fmt.think_start}\n{_EX_THINKING}\n{fmt.think_end}\n{_EX_ANSWER}"},
    ]


def task_example(task: str) -> list[dict[str, str]]:
    """A one-shot demonstration of a critic or integrator task ("critique", "rewrite", "final"), for base models."""
    shots = {
        "critique": (critique_prompt(_EX_QUESTION, _EX_WEAK_THINKING), _EX_CRITIQUE),
        "rewrite": (rewrite_prompt(_EX_WEAK_THINKING, _EX_CRITIQUE), _EX_THINKING),
        "final": (integrate_prompt(_EX_QUESTION, _EX_DRAFTS), _EX_ANSWER),
    }
    prompt, reply = shots[task]
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
