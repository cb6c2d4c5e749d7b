"""The result of a recursive run: every round, every model call, the final answer.

Serialises to JSON and back without loss (``Transcript.from_json(t.to_json()) == t``).
Token and time totals are derived, written to JSON for readers, and ignored on load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

SCHEMA_VERSION = 1


@dataclass
class Call:
    """One model call."""

    role: str  # reasoner, critic, integrator
    channel: str  # thinking, reflection, answer, critique, rewrite, final
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0
    ttft: float | None = None
    finish_reason: str = ""


@dataclass
class Round:
    index: int  # 1-based
    thinking: str = ""
    # True when the model closed its own thinking section; False when the engine
    # closed it at the thinking budget (the model then answered from there).
    thinking_closed: bool = True
    thinking_source: str = "model"  # "model" (written now) or "improved" (the critic's rewrite, pre-filled)
    reflection: str | None = None
    reflection_closed: bool | None = None
    answer: str = ""
    critique: str | None = None  # feedback on this round's thinking, used to improve it for the next round
    critique_source: str | None = None  # "critic" or "reflection" (the model's own)
    improved_thinking: str | None = None  # the rewrite the next round starts from
    passages: list[dict] = field(default_factory=list)  # evidence the critique checked against: {"n", "source", "text"}
    cited: list[int] = field(default_factory=list)  # the passage numbers the critique cited
    verdict: str | None = None  # the critic's: "fix" or "nothing to fix"; None when it gave none
    calls: list[Call] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.calls)


@dataclass
class Transcript:
    question: str
    mode: str
    rounds: list[Round] = field(default_factory=list)
    final_answer: str = ""
    integrated: bool = False
    integration: Call | None = None
    models: dict = field(default_factory=dict)  # role -> backend description
    settings: dict = field(default_factory=dict)  # sampling, recursion, format
    context: list[dict] = field(default_factory=list)  # retrieved chunks given to the reasoner
    stop_reason: str = "rounds"  # "rounds" (ran the most), "nothing_to_fix" or "answers_agree" (stopped early)
    selection: dict | None = None  # a keyed answer's selection: stated answers, votes, chosen, rule
    version: int = SCHEMA_VERSION

    @property
    def calls(self) -> list[Call]:
        return [c for r in self.rounds for c in r.calls] + ([self.integration] if self.integration else [])

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.calls)

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for r_obj, r_dict in zip(self.rounds, data["rounds"]):
            r_dict.update(prompt_tokens=r_obj.prompt_tokens, completion_tokens=r_obj.completion_tokens, seconds=round(r_obj.seconds, 4))
        data["totals"] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 4)}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Transcript:
        def call(d):
            return Call(**{k: d[k] for k in _names(Call) if k in d})

        rounds = []
        for rd in data.get("rounds", []):
            fields = {k: rd[k] for k in _names(Round) if k in rd and k != "calls"}
            rounds.append(Round(**fields, calls=[call(c) for c in rd.get("calls", [])]))
        fields = {k: data[k] for k in _names(cls) if k in data and k not in ("rounds", "integration")}
        integration = call(data["integration"]) if data.get("integration") else None
        return cls(**fields, rounds=rounds, integration=integration)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Transcript:
        return cls.from_dict(json.loads(text))


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
