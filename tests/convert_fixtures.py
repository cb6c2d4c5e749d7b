"""Tiny checkpoints for the converter tests: Llama-, Qwen2-, Qwen3- and Gemma3-shaped, built locally in seconds."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_model import CORPUS, TAGS, build_tokenizer

# Pre-tokenizer regexes of well-known byte-level BPE families (as tokenizer.json holds them).
SPLIT_REGEX = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "custom": r"\p{N}{1,2}|[^\s\p{N}]+|\s+",
}


def _spm_tokenizer(out_dir: Path, tags: bool):
    """A SentencePiece BPE (byte fallback, dummy prefix) as a Llama-2-style tokenizer.model."""
    import sentencepiece as spm
    import transformers as tf

    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 4), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=420,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        add_dummy_prefix=True,
        minloglevel=2,
    )
    corpus.unlink()
    (out_dir / "tokenizer.vocab").unlink()
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True}
        )
    )
    (out_dir / "config.json").write_text('{"model_type": "llama"}')
    tok = tf.AutoTokenizer.from_pretrained(out_dir)
    if tags:
        tok.add_special_tokens({"extra_special_tokens": TAGS}, replace_extra_special_tokens=False)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    tok.save_pretrained(out_dir)
    return tok


def build_tiny(
    out_dir: str | Path, arch: str = "llama", tags: bool = True, tied: bool = False, seed: int = 0, hidden: int = 64, layers: int = 2, tokenizer: str = "bpe"
) -> Path:
    """A random tiny causal LM of family ``arch`` with the tags unless ``tags=False``.

    ``tokenizer``: "bpe" (the tiny byte-level BPE, GPT-2 split), "llama3" / "qwen2" / "custom" (the same
    BPE behind that family's split regex, or an unknown one), or "spm" (a SentencePiece tokenizer.model).
    """
    import torch
    import transformers as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer == "spm":
        tok = _spm_tokenizer(out_dir, tags)
    else:
        tok = build_tokenizer(out_dir, tags=tags)
    if tokenizer in SPLIT_REGEX:
        tj = json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))
        tj["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_REGEX[tokenizer]}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        }
        (out_dir / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
        tok = tf.AutoTokenizer.from_pretrained(out_dir)
    if arch in ("qwen2", "qwen3"):  # reload as the family's tokenizer class (it adds <|endoftext|>)
        (out_dir / "config.json").write_text(json.dumps({"model_type": arch}))
        tok = tf.AutoTokenizer.from_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")],
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tied,
    )
    if arch == "llama":
        config, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = tf.Qwen2Config(**common), tf.Qwen2ForCausalLM
    elif arch == "qwen3":
        config, cls = tf.Qwen3Config(head_dim=16, **common), tf.Qwen3ForCausalLM
    elif arch == "gemma3":
        # sliding window longer than any test prompt; alternate local/global layers (different rope bases)
        config = tf.Gemma3TextConfig(
            head_dim=16,
            sliding_window=256,
            layer_types=["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
            query_pre_attn_scalar=16,
            rope_local_base_freq=10000.0,
            **common,
        )
        cls = tf.Gemma3ForCausalLM
    elif arch == "mistral":
        config, cls = tf.MistralConfig(**common), tf.MistralForCausalLM
    else:
        raise ValueError(arch)
    model = cls(config).eval()
    with torch.no_grad():  # larger-than-default weights so that greedy decoding is not a flat tie
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.generation_config = tf.GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(out_dir)
    return out_dir


def gguf_with_arch(path, arch):
    """A GGUF that declares architecture ``arch`` and holds one tensor: loaders must refuse it by name."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
