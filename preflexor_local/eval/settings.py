"""The evaluation's own settings, declared once (typed, with help text and flags) like ``config.Sampling``.

``cli_options(EvalSettings)`` generates the ``eval`` command's flags from this
dataclass, so the CLI and the Python API accept and refuse the same values.
List-valued settings accept a comma-separated string ("1,3") and are stored as tuples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..config import Recursion, Settings, opt
from ..errors import UsageError

BASELINES = ("self-consistency", "best-of-n")
SELECTORS = ("auto", "judge", "key")


def _int_list(value, flag: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise UsageError(f"{flag} takes whole numbers separated by commas, got {value!r}", hint=f"e.g. {flag} 1,3") from None
    out = tuple(sorted(set(int(v) for v in value)))
    if not out:
        raise UsageError(f"{flag} needs at least one value", hint=f"e.g. {flag} 1,3")
    if out[0] < 1:
        raise UsageError(f"{flag} values must be at least 1, got {out[0]}", hint="1 = a single thinking answer; N > 1 adds N-1 critique-and-improve rounds")
    # The engine's own bound on rounds (declared on Recursion.rounds), named with this flag.
    most = next(f for f in fields(Recursion) if f.name == "rounds").metadata.get("bounds", {}).get("le")
    if most is not None and out[-1] > most:
        raise UsageError(f"{flag} values must be at most {most:g}, got {out[-1]}")
    return out


def _name_list(value, flag: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",")]
    names = tuple(dict.fromkeys(v for v in value if v and v != "none"))
    for name in names:
        if name not in allowed:
            raise UsageError(f"unknown {flag} value {name!r}", hint=f"choose from: {', '.join(allowed)} (comma-separated), or none")
    return names


@dataclass
class EvalSettings(Settings):
    rounds: tuple[int, ...] | str = opt("1,3", "Round counts to compare, comma-separated (1 = a single thinking answer).", "--rounds")
    baselines: tuple[str, ...] | str = opt(
        "self-consistency",
        "Baselines at the generated-token budget of the largest round count: self-consistency, best-of-n (comma-separated, or none).",
        "--baselines",
    )
    sample_temperature: float = opt(
        0.7, "Temperature of the baselines' independent samples (at 0 they would all be the same answer).", "--sample-temperature", ge=0, le=10
    )
    max_samples: int = opt(16, "Most samples a baseline draws per item, whatever the budget.", "--max-samples", ge=1)
    batch: int = opt(
        4,
        "Baseline samples of one item launched at once: they decode together on a llama.cpp model (loaded with as many parallel slots) or a server.",
        "--batch",
        ge=1,
        le=16,
    )
    adaptive: bool = opt(
        False,
        "Add the adaptive condition: rounds that stop early (the critic finds nothing to fix, or two answers agree), at most the largest --rounds.",
        "--adaptive/--no-adaptive",
    )
    selector: str = opt(
        "auto",
        "How best-of-n picks its sample: judge (pairwise, both orders), key (oracle: the answer key; an upper bound), auto (judge if --judge is given, else key).",
        "--selector",
        choices=SELECTORS,
    )
    judge_max_tokens: int = opt(48, "Most tokens per judge verdict.", "--judge-max-tokens", ge=1)
    concurrency: int = opt(1, "Items run in parallel; above 1 only when every model is an OpenAI-compatible server.", "--concurrency", "-j", ge=1)
    limit: int | None = opt(None, "Evaluate only the first N questions of the set.", "--limit", ge=1)

    def __post_init__(self) -> None:
        self.rounds = _int_list(self.rounds, "--rounds")
        self.baselines = _name_list(self.baselines, "--baselines", BASELINES)
        super().__post_init__()  # the declared ranges and choices

    @property
    def max_rounds(self) -> int:
        return max(self.rounds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rounds"], d["baselines"] = list(self.rounds), list(self.baselines)
        return d
