import pytest

from preflexor_local.errors import UsageError
from preflexor_local.prompt import ChatTemplate, choose_template, known_template, looks_instruct, render_prompt
from preflexor_local.reasoning import wording

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why? {not a field}"}]


def test_prefill_is_appended_after_generation_prompt_and_messages_untouched():
    before = [dict(m) for m in MSGS]
    out = render_prompt(known_template("llama3", bos_token="<|begin_of_text|>"), MSGS, prefill="<|thinking|>\n")
    assert out.startswith("<|begin_of_text|><|start_header_id|>system")
    assert out.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<|thinking|>\n")
    assert MSGS == before


def test_gemma_folds_system_into_first_user_turn():
    out = known_template("gemma", bos_token="<bos>").render(MSGS, prefill="X")
    assert out == "<bos><start_of_turn>user\nBe brief.\n\nWhy? {not a field}<end_of_turn>\n<start_of_turn>model\nX"


def test_plain_format_for_base_models():
    out = known_template("plain").render(MSGS)
    assert out == "Be brief.\n\nQuestion: Why? {not a field}\nAnswer: "


def test_choose_template_order(tmp_path):
    own = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert choose_template(None, own, "gemma3", instruct=True).name == "model"
    assert choose_template(None, None, "gemma3", instruct=True).name == "gemma"
    assert choose_template(None, None, "gemma3", instruct=False).name == "plain"
    assert choose_template(None, None, "llama", instruct=True, vocab_has=frozenset({"<|start_header_id|>"})).name == "llama3"
    assert choose_template("chatml", own, "gemma3", instruct=False).name == "chatml"
    f = tmp_path / "t.jinja"
    f.write_text(own)
    assert choose_template(str(f), None, None, instruct=False).render([{"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(UsageError):
        choose_template("no-such-template", None, None, instruct=False)


def test_broken_template_is_a_usage_error():
    with pytest.raises(UsageError):
        ChatTemplate("model", "{% for %}").render(MSGS)


def test_instruct_detection():
    assert looks_instruct("gemma-3-1b-it") and looks_instruct("Llama 3.2 3B Instruct")
    assert not looks_instruct("Gemma 3 270m") and not looks_instruct("gemma-3-270m-q4_k_m.gguf")


def test_engine_prompts_survive_braces():
    text = wording.critique_prompt("What is {x}?", "think {{y}}")
    assert "What is {x}?" in text and "think {{y}}" in text


def test_probe_template_reads_names_and_format_tokens(tmp_path):
    from tiny_model import build_tokenizer

    from preflexor_local.prompt import hf_has_token, probe_template

    tok = build_tokenizer(tmp_path / "a")  # byte-level BPE: "<|im_start|>" is several tokens
    has = hf_has_token(tok)
    assert not has("<|im_start|>") and has("<|thinking|>")
    assert probe_template(None, None, "llama", names=("tiny-chat",), has_token=has).name == "plain"  # no format token
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    assert has("<|im_start|>")
    assert probe_template(None, None, "llama", names=("tiny-chat",), has_token=has, bos_token="<s>").name == "chatml"
    assert probe_template(None, None, "llama", names=("tiny", "base.gguf"), has_token=has).name == "plain"  # looks base
    assert probe_template(None, None, "llama", names=("tiny",), has_token=has, instruct=True).name == "chatml"  # told instruct
    both = {"<|im_start|>", "<|start_header_id|>"}.__contains__
    assert probe_template(None, None, None, names=("x-it",), has_token=both).name == "llama3"  # FORMAT_TOKENS order
    assert probe_template(None, None, "qwen2", names=("x-it",), has_token=both).name == "chatml"  # architecture first
    assert probe_template(None, "{{ 1 }}", "qwen2", names=("x-it",), has_token=both).name == "model"  # own template first
