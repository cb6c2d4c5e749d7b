"""The tokenizer part of a GGUF file, built from a Hugging Face checkpoint.

Three tokenizer kinds are understood, each stated in the result (``kind``):

* ``gpt2`` — byte-level BPE from ``tokenizer.json`` (Llama 3, Qwen2/3, custom
  ``tokenizers`` BPE). llama.cpp needs the name of the pre-tokenizer regex. We
  read the regex itself from ``tokenizer.json`` and map it by exact text:
  GPT-2's ``ByteLevel`` regex -> ``gpt-2``, Llama 3's (digits in groups of 3) ->
  ``llama-bpe``, Qwen2's (single digits) -> ``qwen2``. Anything else gets the
  **fallback** ``gpt-2`` and a note saying so (``convert verify`` then shows
  whether tokenisation still agrees); it is never silently guessed.
* ``llama`` from ``tokenizer.model`` — SentencePiece (Gemma, Llama 2, Mistral):
  pieces, scores and piece types read with the sentencepiece library.
* ``llama`` from ``tokenizer.json`` — a SentencePiece-style BPE (``▁`` for
  spaces, byte fallback) saved by ``tokenizers``. llama.cpp's SentencePiece
  tokenizer merges the adjacent pair whose result has the highest score, so a
  token made by the merge of rank r gets score ``-r``: the same merge order as
  the BPE, hence the same tokens.

Token types: special added tokens (and bos/eos/pad/unk) are CONTROL; other
added tokens USER_DEFINED; ``<0xNN>`` pieces BYTE; the unknown piece UNKNOWN;
rows beyond the tokenizer (embedding padding) ``[PADn]`` UNUSED, so that the
token list is exactly as long as the embedding matrix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError

# The pre-tokenizer regexes llama.cpp knows by name (as they appear in tokenizer.json).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
KNOWN_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    GPT2_REGEX: "gpt-2",
}
FALLBACK_PRE = "gpt-2"
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")

# gguf.TokenType values (kept here so this module imports without gguf)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GGUFVocab:
    kind: str  # "gpt2" or "llama"
    source: str  # "tokenizer.json" or "tokenizer.model"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.kind)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        for name, value in (("bos", self.bos_id), ("eos", self.eos_id), ("eot", self.eot_id), ("pad", self.pad_id), ("unk", self.unk_id)):
            if value is not None:
                getattr(writer, f"add_{name}_token_id")(int(value))
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _walk(node):
    """Every dict inside a tokenizer.json component (Sequence nesting flattened)."""
    if isinstance(node, dict):
        yield node
        for key in ("pretokenizers", "normalizers", "processors", "decoders"):
            for child in node.get(key) or []:
                yield from _walk(child)


def _split_regex(pre_tokenizer) -> str | None:
    for node in _walk(pre_tokenizer):
        if node.get("type") == "Split":
            pat = node.get("pattern") or {}
            return pat.get("Regex") or pat.get("String")
    for node in _walk(pre_tokenizer):
        if node.get("type") == "ByteLevel" and node.get("use_regex", True):
            return GPT2_REGEX
    return None


def _is_spm_style(tj: dict) -> bool:
    model = tj.get("model") or {}
    if model.get("byte_fallback"):
        return True
    for node in [*_walk(tj.get("normalizer")), *_walk(tj.get("pre_tokenizer"))]:
        if node.get("type") == "Metaspace":
            return True
        if node.get("type") == "Replace" and (node.get("content") == "▁"):
            return True
    return False


def _spm_prefix(tj: dict) -> bool:
    for node in [*_walk(tj.get("normalizer")), *_walk(tj.get("pre_tokenizer"))]:
        if node.get("type") == "Prepend" and node.get("prepend") == "▁":
            return True
        if node.get("type") == "Metaspace" and node.get("prepend_scheme", "always") != "never" and node.get("add_prefix_space", True):
            return True
    return False


def _merge_pairs(merges) -> list[tuple[str, str]]:
    out = []
    for m in merges:
        if isinstance(m, str):
            a, _, b = m.partition(" ")
        else:
            a, b = m
        out.append((a, b))
    return out


def build_vocab(model_dir: str | Path, n_vocab: int, tokenizer=None, generation_eos: list[int] | None = None) -> GGUFVocab:
    """Read the tokenizer of ``model_dir`` into a ``GGUFVocab`` of exactly ``n_vocab`` tokens."""
    model_dir = Path(model_dir)
    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as err:  # noqa: BLE001 - any failure here means "no usable tokenizer"
            raise InvalidModelError(
                f"cannot load the tokenizer of {model_dir}: {err}", hint="the checkpoint needs tokenizer.json (or tokenizer.model) and tokenizer_config.json"
            ) from None
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab or max(vocab.values()) >= n_vocab:
        raise InvalidModelError(
            f"the tokenizer has {len(vocab)} tokens (ids up to {max(vocab.values())}) but the model has only {n_vocab} embedding rows",
            hint="resize the embeddings (convert add-tokens does this) before converting",
        )
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    specials = {i for i, t in added.items() if t.special}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        i = getattr(tokenizer, name, None)
        if isinstance(i, int):
            specials.add(i)
    notes: list[str] = []
    tj_file, spm_file = model_dir / "tokenizer.json", model_dir / "tokenizer.model"
    tj = json.loads(tj_file.read_text(encoding="utf-8")) if tj_file.is_file() else None
    model_type = (tj or {}).get("model", {}).get("type")
    use_spm_file = spm_file.is_file() and (tj is None or _is_spm_style(tj))
    if tj is None and not spm_file.is_file():
        raise InvalidModelError(f"{model_dir} has neither tokenizer.json nor tokenizer.model", hint="copy the tokenizer files next to config.json")
    if not use_spm_file and model_type != "BPE":
        raise InvalidModelError(
            f"tokenizer model type {model_type!r} is not supported for GGUF (only BPE and SentencePiece)",
            hint="WordPiece/Unigram tokenizers (BERT, T5 families) are not causal chat models this converter targets",
        )

    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    scores: list[float] | None = None
    merges: list[str] = []
    add_space_prefix = None
    if use_spm_file:
        kind, source, pre = "llama", "tokenizer.model", "default"
        scores = [-1000.0] * n_vocab
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        proc = spm.SentencePieceProcessor(model_file=str(spm_file))
        proto = pb.ModelProto()
        proto.ParseFromString(spm_file.read_bytes())
        add_space_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
        for i in range(proc.get_piece_size()):
            tokens[i] = proc.id_to_piece(i)
            scores[i] = proc.get_score(i)
            types[i] = (
                UNKNOWN
                if proc.is_unknown(i)
                else CONTROL
                if proc.is_control(i)
                else UNUSED
                if proc.is_unused(i)
                else BYTE
                if proc.is_byte(i)
                else USER_DEFINED
                if proto.pieces[i].type == 4
                else NORMAL
            )
        base_n = proc.get_piece_size()
    else:
        source = "tokenizer.json"
        pairs = _merge_pairs(tj["model"].get("merges") or [])
        base_vocab = tj["model"].get("vocab") or {}
        base_n = len(base_vocab)
        if _is_spm_style(tj):
            kind, pre = "llama", "default"
            add_space_prefix = _spm_prefix(tj)
            scores = [-1000.0] * n_vocab
            rank = {}
            for r, (a, b) in enumerate(pairs):
                rank.setdefault(a + b, r)
            unk = tj["model"].get("unk_token")
            for text, i in base_vocab.items():
                tokens[i] = text
                if text in rank:
                    scores[i] = -float(rank[text]) - 1.0
                elif len(text) == 1:
                    scores[i] = 0.0  # single characters: no merge makes them
                types[i] = BYTE if _BYTE_PIECE.match(text) else UNKNOWN if text == unk else NORMAL
            notes.append("SentencePiece-style BPE from tokenizer.json: scores = -merge rank, so llama.cpp merges in the BPE's order")
        else:
            kind = "gpt2"
            regex = _split_regex(tj.get("pre_tokenizer"))
            pre = KNOWN_PRE.get(regex or "")
            if pre is None:
                pre = FALLBACK_PRE
                notes.append(
                    f"pre-tokenizer not recognised (regex {regex!r}): using the stated fallback {FALLBACK_PRE!r} "
                    "(GPT-2 byte-level split); run `convert verify` to check tokenisation"
                )
            merges = [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair) for pair in pairs]
            for text, i in base_vocab.items():
                tokens[i] = text
                types[i] = NORMAL
    # added tokens (the tags among them) override the base pieces
    for i, tok in added.items():
        if i >= n_vocab:
            continue
        text = tok.content
        if i < base_n and tokens[i] == text and types[i] in (CONTROL, UNKNOWN, BYTE) and i not in specials:
            continue
        tokens[i] = text
        types[i] = CONTROL if (tok.special or i in specials) else USER_DEFINED
        if scores is not None:
            scores[i] = 0.0 if types[i] == USER_DEFINED else -1000.0
    for i in specials:
        if 0 <= i < n_vocab and types[i] in (NORMAL, USER_DEFINED):
            types[i] = CONTROL
    # any id the tokenizer knows but we did not place (rare): take its text
    for text, i in vocab.items():
        if types[i] == UNUSED and tokens[i].startswith("[PAD"):
            tokens[i], types[i] = text, NORMAL
    if n_vocab > len(vocab):
        notes.append(f"{n_vocab - len(vocab)} embedding padding rows written as unused [PADn] tokens")

    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bool(bos is not None and probe and probe[0] == bos)
    add_eos = bool(eos is not None and probe and probe[-1] == eos and len(probe) > 1)
    eot = None
    for i in generation_eos or []:
        if i != eos and 0 <= i < n_vocab:
            eot = i
            break
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    if not template:
        notes.append("the checkpoint has no chat template: none written (a base model; give one with --chat-template)")
    return GGUFVocab(
        kind,
        source,
        pre,
        tokens,
        types,
        scores,
        merges,
        bos,
        eos,
        eot,
        tokenizer.pad_token_id,
        getattr(tokenizer, "unk_token_id", None),
        add_bos,
        add_eos,
        add_space_prefix,
        template,
        notes,
    )
