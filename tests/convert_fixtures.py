"""Tiny checkpoints for the converter tests: Llama-, Qwen2-, Qwen3- and Gemma3-shaped, built locally in seconds."""

from __future__ import annotations

from pathlib import Path

from tiny_model import build_tokenizer


def build_tiny(out_dir: str | Path, arch: str = "llama", tags: bool = True, tied: bool = False, seed: int = 0,
               hidden: int = 64, layers: int = 2) -> Path:
    """A random tiny causal LM of family ``arch`` with the tiny BPE tokenizer (and the tags unless ``tags=False``)."""
    import torch
    import transformers as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir, tags=tags)
    if arch in ("qwen2", "qwen3"):  # reload as the family's tokenizer class (it adds <|endoftext|>)
        (out_dir / "config.json").write_text('{"model_type": "%s"}' % arch)
        tok = tf.AutoTokenizer.from_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")],
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=tied)
    if arch == "llama":
        config, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = tf.Qwen2Config(**common), tf.Qwen2ForCausalLM
    elif arch == "qwen3":
        config, cls = tf.Qwen3Config(head_dim=16, **common), tf.Qwen3ForCausalLM
    elif arch == "gemma3":
        # sliding window longer than any test prompt; alternate local/global layers (different rope bases)
        config = tf.Gemma3TextConfig(head_dim=16, sliding_window=256, layer_types=["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
                                     query_pre_attn_scalar=16, rope_local_base_freq=10000.0, **common)
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
    model.generation_config = tf.GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                                  pad_token_id=config.pad_token_id)
    model.save_pretrained(out_dir)
    return out_dir
