"""``ask``: the main job as one function a Python user can call without the CLI."""

from __future__ import annotations

from collections.abc import Callable

from ..backends import Backend, load
from ..config import LoadOptions, Recursion, Sampling
from ..format import ThinkingFormat
from .engine import Engine, Event, Evidence
from .transcript import Transcript


def load_roles(
    model: str | None, critic: str | None = None, integrator: str | None = None, options: LoadOptions | None = None, *, grounded: bool = False
) -> tuple[Backend, Backend, Backend]:
    """Load the reasoner, critic and integrator; a role naming the same spec shares the loaded model.

    ``grounded``: retrieval is on, and the default model is loaded as its grounded variant (``models.for_retrieval``).
    """
    from ..models import for_retrieval

    model = for_retrieval(model, grounded)
    critic, integrator = (None if m is None else for_retrieval(m, grounded) for m in (critic, integrator))  # None: as the role before
    loaded: dict[str | None, Backend] = {}

    def get(spec: str | None) -> Backend:
        if spec not in loaded:
            loaded[spec] = load(spec, options)
        return loaded[spec]

    reasoner = get(model)
    critic_b = get(critic) if critic is not None else reasoner
    integrator_b = get(integrator) if integrator is not None else critic_b
    return reasoner, critic_b, integrator_b


def ask(
    question: str,
    model: str | None = None,
    *,
    critic: str | None = None,
    integrator: str | None = None,
    sampling: Sampling | None = None,
    recursion: Recursion | None = None,
    options: LoadOptions | None = None,
    fmt: ThinkingFormat | None = None,
    context: list[dict] | None = None,
    evidence: Evidence | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Transcript:
    """Answer ``question`` with recursive thinking; models load, run and are freed here.

    ``context``: retrieved chunks for the reasoner; ``evidence``: passages for the critic to check each round's
    thinking against (``rag.evidence.Evidence(store)``).

    >>> t = ask("Why is spider silk tough?", recursion=Recursion(rounds=3))  # doctest: +SKIP
    >>> print(t.final_answer)  # doctest: +SKIP
    """
    roles = load_roles(model, critic, integrator, options, grounded=context is not None or evidence is not None)
    try:
        engine = Engine(*roles, sampling=sampling, recursion=recursion, fmt=fmt, context=context, evidence=evidence, on_event=on_event)
        return engine.run(question)
    finally:
        for backend in {id(b): b for b in roles}.values():
            backend.close()
