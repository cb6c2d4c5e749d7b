"""Preference pairs -> token ids, the same way for every engine (torch-free).

* **The prompt is the served prompt.** ``training_template`` is the template
  rule inference uses (``probe_template``), and pairs are rendered with
  ``render_pair`` (``render_prompt`` inside), so a trained model is asked
  exactly what it was trained on.
* **Tokenisation is the transformers backend's**: no automatic special tokens;
  the model's BOS prefix (``bos_prefix``) only when the rendered text does not
  already start with the BOS token. The completion is what tokenising
  prompt + completion adds after its common prefix with the prompt alone.
* **Lengths are checked, never silently cut.** A pair whose prompt + chosen
  reply exceeds ``max_length`` is dropped and counted (``dropped_long``); a
  rejected reply that does not fit is cut at the end and counted
  (``truncated_rejected``).

``tokenizer`` is any Hugging Face tokenizer (the TRL engine's, or the one
inside mlx-lm's ``TokenizerWrapper``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.base import common_prefix
from ..format import ThinkingFormat
from ..prompt import ChatTemplate, hf_has_token, probe_template
from .config import TrainConfig
from .data import PreferencePair, render_pair


def tag_ids(tokenizer, fmt: ThinkingFormat) -> list[int] | None:
    """The ids of the four tags when each is a single token of ``tokenizer``, else ``None``."""
    ids = []
    for tag in fmt.tags:
        enc = tokenizer.encode(tag, add_special_tokens=False)
        if len(enc) != 1:
            return None
        ids.append(enc[0])
    return ids


def bos_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before text by itself (its BOS), found by encoding with and without them."""
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    return with_special[: with_special.index(without[0])] if without and without[0] in with_special else []


def training_template(cfg: TrainConfig, tokenizer, model_type: str | None, name: str) -> ChatTemplate:
    """The chat template a run trains with (and saves): inference's rule; DPO models count as instruction-tuned."""
    return probe_template(
        cfg.chat_template,
        tokenizer.chat_template,
        model_type,
        names=(name,),
        has_token=hf_has_token(tokenizer),
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
        instruct=cfg.is_dpo,
    )


@dataclass
class Encoded:
    rows: list[dict] = field(default_factory=list)  # prompt_ids, chosen_ids, rejected_ids, row, chosen_end
    pairs: int = 0
    dropped_long: int = 0
    truncated_rejected: int = 0
    dropped_lines: list[int] = field(default_factory=list)

    def counts(self) -> dict:
        return {"pairs_in": self.pairs, "pairs_used": len(self.rows), "dropped_long": self.dropped_long, "truncated_rejected": self.truncated_rejected}


class Encoder:
    """Render + tokenise pairs exactly as inference renders and the transformers backend tokenises."""

    def __init__(self, tokenizer, template: ChatTemplate, max_length: int):
        self.tok = tokenizer
        self.template = template
        self.max_length = max_length
        self.prefix = bos_prefix(tokenizer)

    def encode_text(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False).input_ids
        bos = self.tok.bos_token
        if self.prefix and not (bos and text.startswith(bos)):
            ids = self.prefix + ids
        return ids

    def encode(self, pairs: list[PreferencePair]) -> Encoded:
        out = Encoded(pairs=len(pairs))
        for i, pair in enumerate(pairs):
            prompt, chosen, rejected = render_pair(self.template, pair)
            p = self.encode_text(prompt)
            pc = self.encode_text(prompt + chosen)
            pr = self.encode_text(prompt + rejected)
            n = min(common_prefix(p, pc), common_prefix(p, pr), len(p))
            prompt_ids, chosen_ids, rejected_ids = p[:n], pc[n:], pr[n:]
            if n + len(chosen_ids) > self.max_length:
                out.dropped_long += 1
                out.dropped_lines.append(pair.line or i + 1)
                continue
            room = self.max_length - n
            if len(rejected_ids) > room:
                rejected_ids = rejected_ids[:room]
                out.truncated_rejected += 1
            if not chosen_ids or not rejected_ids:
                out.dropped_long += 1
                out.dropped_lines.append(pair.line or i + 1)
                continue
            # Where the chosen reply's text ends and the template's end of turn begins (-1: no end of turn).
            end = common_prefix(self.encode_text(prompt + pair.chosen), pc) - n
            out.rows.append(
                {
                    "prompt_ids": prompt_ids,
                    "chosen_ids": chosen_ids,
                    "rejected_ids": rejected_ids,
                    "row": len(out.rows),
                    "chosen_end": end if 0 <= end < len(chosen_ids) else -1,
                }
            )
        return out
