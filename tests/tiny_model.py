"""Tiny random-weight models the tests build locally (no hub, under a second).

``build_tiny_llama`` trains a byte-level BPE tokenizer on a few sentences with
the ``tokenizers`` library, registers the thinking tags as special tokens, adds
a small chat template, and saves a random LlamaForCausalLM next to it.
"""

from __future__ import annotations

from pathlib import Path

TAGS = ["<|thinking|>", "<|/thinking|>", "<|reflect|>", "<|/reflect|>"]
CHAT_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CORPUS = [
    "Spider silk is tough because of its hierarchical structure of beta sheets and amorphous chains.",
    "Bone combines stiff mineral platelets with soft collagen fibrils to stop cracks.",
    "Nacre deflects cracks through layered aragonite tablets bound by proteins.",
    "The question is answered after careful thinking and reflection.",
    "Materials fail gracefully when energy is dissipated across many length scales.",
    "Hello world! Numbers 0123456789, symbols {}[]()<>+-*/=_.,;:?!'\" and spaces.",
]
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


def build_tokenizer(out_dir: Path, tags: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", *CHAT_TOKENS, *(TAGS if tags else [])]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=[*CHAT_TOKENS, *(TAGS if tags else [])],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(out_dir: str | Path, tags: bool = True, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir, tags=tags)
    torch.manual_seed(seed)
    config = LlamaConfig(
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
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(out_dir)
    return out_dir
