"""Rules the in-process backends and the trainers share, declared once in ``backends/base.py``."""

from __future__ import annotations

from preflexor_local.backends.base import CONTEXT_CAP, common_prefix, context_window, reusable_prefix


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3], limit=1) == 1
    assert common_prefix([1, 2, 3], [1, 2, 3], limit=-1) == 0


def test_reusable_prefix_keeps_the_last_prompt_token_for_fresh_logits():
    assert reusable_prefix([1, 2, 3], [1, 2, 3]) == 2  # the same prompt again: its last token is evaluated again
    assert reusable_prefix([1, 2, 3, 7, 8], [1, 2, 3, 4, 5]) == 3
    assert reusable_prefix([1, 2], [1, 2, 3, 4]) == 2
    assert reusable_prefix([9], [1, 2]) == 0
    assert reusable_prefix([1], []) == 0


def test_context_window_is_the_trained_length_capped_unless_asked():
    assert CONTEXT_CAP == 8192
    assert context_window(512) == 512
    assert context_window(131072) == CONTEXT_CAP
    assert context_window(None) == CONTEXT_CAP  # unknown trained length
    assert context_window(131072, asked=32768) == 32768  # --ctx opens more than the cap
    assert context_window(512, asked=64) == 64


def _sentencepiece_tokenizer():
    """A Llama-2-style tokenizer built here: "▁" word starts, byte fallback for characters it never saw, and a
    decoder that strips the text's first space (so "▁is" decoded alone is "is")."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    corpus = ["Spider silk is tough because of its hierarchical structure.", "The answer is here, and bone is tough too."]
    tok.train_from_iterator(corpus * 4, trainer=trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    data = json.loads(tok.to_str())
    for byte in range(256):
        data["model"]["vocab"].setdefault(f"<0x{byte:02X}>", len(data["model"]["vocab"]))
    data["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_text_detokenizer_keeps_word_starts_and_whole_characters():
    from preflexor_local.backends.base import TextDetokenizer

    tok = _sentencepiece_tokenizer()
    prompt = tok("The answer", add_special_tokens=False).input_ids
    reply = tok("The answer is café 日本 🙂 here</s>", add_special_tokens=False).input_ids[len(prompt) :]
    assert tok.convert_ids_to_tokens(reply[:1]) == ["▁is"] and tok.decode(reply[:1]) == "is"  # the trap: alone, no space
    assert "<0xF0>" in tok.convert_ids_to_tokens(reply)  # the emoji is four byte tokens
    d = TextDetokenizer(tok, prompt)
    parts = [d.push(t) for t in reply] + [d.flush()]
    assert "".join(parts) == " is café 日本 🙂 here</s>"  # the reply's first space survives; the special token is kept
    assert parts[0] == " is" and "🙂" in parts and not any("\ufffd" in p for p in parts)  # characters come out whole
    # a character cut off by the end of generation is still released by flush, as the replacement character
    d = TextDetokenizer(tok, prompt)
    cut = tok("🙂", add_special_tokens=False).input_ids[:-1]  # "▁" and three of the emoji's four bytes
    assert "".join(d.push(t) for t in cut) == " " and set(d.flush()) == {"\ufffd"} and d.flush() == ""
