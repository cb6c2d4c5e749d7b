"""`export`: the merged GGUF behaves as base + runtime adapter; the folders for Ollama, llama-server and LM Studio.

The merge proofs: on tiny f32 models the merged file's greedy tokens (and `ask`'s answer) are base + adapter's;
on the default model (Q4_K_M Gemma 3 270M + the demo adapter) the merged file meets the figures of
tests/test_lora_gguf.py against the runtime adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from convert_cli import run_cli
from convert_fixtures import build_tiny
from test_lora_gguf import GREEDY, MSGS, make_adapter, next_logits_gguf

from preflexor_local.config import LoadOptions
from preflexor_local.errors import InvalidModelError, ModelNotFoundError, UsageError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Per family: (HF folder, f32 base GGUF, two LoRA GGUFs, the first one's PEFT folder)."""
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    root = tmp_path_factory.mktemp("export")
    out = {}
    for arch in ("llama", "gemma3"):
        hf = build_tiny(root / arch, arch=arch, tied=arch == "gemma3")
        base = root / f"{arch}.gguf"
        convert_to_gguf(hf, base, "f32", quiet=True)
        loras, peft = [], None
        for seed in (1, 2):
            adapter = make_adapter(hf, root / f"{arch}-adapter-{seed}", seed=seed)
            peft = peft or adapter
            loras.append(Path(convert_lora_to_gguf(adapter, base, root / f"{arch}-adapter-{seed}.gguf", "f32", quiet=True).output))
        out[arch] = (hf, base, loras, peft)
    return out


def greedy_tokens(gguf, adapters=(), n: int = 24) -> list[int]:
    """llama.cpp's greedy continuation of the chat prompt (``GREEDY``: temperature 0), as token ids."""
    from preflexor_local.backends import load

    b = load(str(gguf), LoadOptions(adapters=tuple(adapters)))
    try:
        return list(b.token_stream(b.encode(b.template.render(MSGS)), GREEDY, n))
    finally:
        b.close()


def tensor_bytes(path) -> dict[str, bytes]:
    import gguf

    return {t.name: (t.tensor_type, bytes(np.asarray(t.data).tobytes())) for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tiny_merged_greedy_equals_base_plus_runtime_adapters(tiny, tmp_path, arch):
    from preflexor_local.convert.export_gguf import export_gguf

    _, base, (a1, a2), _ = tiny[arch]
    adapters = (f"{a1}:0.5", str(a2))
    res = export_gguf(str(base), adapters, tmp_path / "merged.gguf", quiet=True)
    assert res.merged_tensors == 7 * 2 and res.copied_tensors > 0
    runtime = greedy_tokens(base, adapters)
    assert runtime == greedy_tokens(tmp_path / "merged.gguf")
    assert runtime != greedy_tokens(base)  # the adapters change the answer: the comparison can fail
    with_adapters, _ = next_logits_gguf(base, adapters=adapters)
    merged, _ = next_logits_gguf(tmp_path / "merged.gguf")
    assert np.abs(merged - with_adapters).max() < 1e-3 * np.abs(with_adapters).max()
    # Untouched tensors are the base's bytes; merged ones keep their type (f32: nothing to requantize).
    before, after = tensor_bytes(base), tensor_bytes(tmp_path / "merged.gguf")
    assert before.keys() == after.keys() and all(before[n][0] == after[n][0] for n in before)
    changed = {n for n in before if before[n] != after[n]}
    assert len(changed) == 14 and all(".attn_" in n or ".ffn_" in n for n in changed)


def test_scale_zero_merge_writes_the_base_tensors_byte_for_byte(tiny, tmp_path):
    from preflexor_local.convert.export_gguf import export_gguf
    from preflexor_local.gguf_meta import read_gguf

    _, base, (a1, _), _ = tiny["llama"]
    export_gguf(str(base), (f"{a1}:0",), tmp_path / "zero.gguf", quiet=True)
    assert tensor_bytes(base) == tensor_bytes(tmp_path / "zero.gguf")
    before, after = read_gguf(base, keep_tokens=True), read_gguf(tmp_path / "zero.gguf", keep_tokens=True)
    assert before.tokens == after.tokens and "<|thinking|>" in after.tokens
    for key, value in before.metadata.items():  # the tokenizer, the tags and the template carry over
        assert key == "general.name" or after.metadata[key] == value, key
    assert after.get("preflexor.merged_adapters") == [f"{a1.name}:0"]


@pytest.mark.parametrize("outtype,file_type", [("f16", 1), ("q8_0", 7)])
def test_whole_file_outtypes_go_through_llama_cpp_quantize(tiny, tmp_path, outtype, file_type):
    from preflexor_local.convert.export_gguf import export_gguf
    from preflexor_local.gguf_meta import read_gguf

    _, base, (a1, _), _ = tiny["llama"]
    export_gguf(str(base), (str(a1),), tmp_path / "m.gguf", outtype, quiet=True)
    assert read_gguf(tmp_path / "m.gguf").get("general.file_type") == file_type
    runtime, _ = next_logits_gguf(base, adapters=(str(a1),))
    merged, _ = next_logits_gguf(tmp_path / "m.gguf")
    base_only, _ = next_logits_gguf(base)
    corr = lambda x: np.corrcoef(x.ravel(), runtime.ravel())[0, 1]  # noqa: E731
    assert corr(merged) > 0.95 > corr(base_only)  # a random tiny model amplifies 8-bit rounding; the adapter's effect is far larger


def test_ask_on_the_merged_file_prints_the_answer_of_base_plus_adapter(tiny, tmp_path):
    _, base, (a1, _), _ = tiny["llama"]
    code, _, err = run_cli("export", "gguf", base, "--adapter", a1, "-o", tmp_path / "m.gguf")
    assert code == 0, err
    flags = ["Why is spider silk tough?", "--temperature", "0", "--max-tokens", "12", "--seed", "0", "--json"]
    runs = {}
    for name, model in (("runtime", ["--model", base, "--adapter", a1]), ("merged", ["--model", tmp_path / "m.gguf"]), ("base", ["--model", base])):
        code, out, err = run_cli("ask", *flags, *model)
        assert code == 0, err
        rnd = json.loads(out)["rounds"][0]
        runs[name] = (rnd["thinking"], rnd["answer"])
    assert runs["merged"] == runs["runtime"] and runs["runtime"] != runs["base"]
    assert "".join(runs["runtime"]).strip()  # something was generated
    code, out_merged, _ = run_cli("ask", *flags[:-1], "--model", tmp_path / "m.gguf")
    code, out_runtime, _ = run_cli("ask", *flags[:-1], "--model", base, "--adapter", a1)
    assert out_merged == out_runtime  # the printed answer


def test_hugging_face_checkpoint_with_peft_adapters(tiny, tmp_path):
    """PEFT merge + convert gguf (scale 1), or the f32 GGUF route (a scale): both are base GGUF + runtime adapter."""
    from preflexor_local.convert.export_gguf import export_gguf

    hf, base, (a1, _), peft = tiny["llama"]
    runtime, _ = next_logits_gguf(base, adapters=(str(a1),))
    half, _ = next_logits_gguf(base, adapters=(f"{a1}:0.5",))
    res = export_gguf(str(hf), (str(peft),), tmp_path / "peft.gguf", quiet=True)
    assert res.outtype == "f32" and "merged by PEFT" in " ".join(res.notes)
    scaled = export_gguf(str(hf), (f"{peft}:0.5",), tmp_path / "scaled.gguf", quiet=True)
    assert scaled.merged_tensors == 14 and scaled.adapters == [f"{peft.name}:0.5"]
    for path, want in ((tmp_path / "peft.gguf", runtime), (tmp_path / "scaled.gguf", half)):
        got, _ = next_logits_gguf(path)
        assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
        assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.slow
def test_default_model_merged_meets_the_lora_gguf_figures(tmp_path):
    """Q4_K_M Gemma 3 270M + the demo adapter, merged, against the same base with the adapter applied at run time:
    the three figures tests/test_lora_gguf.py uses (scale fit, correlation over every logit, greedy pick)."""
    from preflexor_local.convert.export_gguf import export_gguf
    from preflexor_local.gguf_meta import read_gguf
    from preflexor_local.models import default_model_path, demo_adapter_path

    res = export_gguf("default", (), tmp_path / "demo.gguf", quiet=True)
    assert res.adapters == ["demo-adapter.gguf:1"] and res.merged_tensors == 8 * 7 and res.chat_template == "gemma"
    base, _ = next_logits_gguf(default_model_path())
    runtime, _ = next_logits_gguf(default_model_path(), adapters=(str(demo_adapter_path()),))
    merged, _ = next_logits_gguf(tmp_path / "demo.gguf")
    d_ref, d = (runtime - base).ravel(), (merged - base).ravel()
    fit, corr = float(d @ d_ref / (d_ref @ d_ref)), float(np.corrcoef(d, d_ref)[0, 1])
    print(f"adapter effect {np.abs(d_ref).max():.3f} · scale fit {fit:.4f} · correlation {corr:.4f}")
    assert np.abs(d_ref).max() > 1.0  # the adapter moves the logits a lot
    assert 0.9 < fit < 1.1 and corr > 0.95
    for m, r in zip(merged, runtime):
        assert r[m.argmax()] >= r.max() - 0.5
    info = read_gguf(tmp_path / "demo.gguf")
    assert info.get("preflexor.chat_template") == "gemma" and "<start_of_turn>" in info.get("tokenizer.chat_template")
    assert info.get("general.file_type") == read_gguf(default_model_path()).get("general.file_type")


def test_refusals_are_one_line_each(tiny, tmp_path):
    from preflexor_local.convert.export_gguf import export_gguf
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    hf, base, (a1, _), _ = tiny["llama"]
    cases = [
        (["export", "gguf", tmp_path / "missing.gguf", "-o", tmp_path / "x.gguf"], "model file not found"),
        (["export", "gguf", base, "--outtype", "q3_weird", "-o", tmp_path / "x.gguf"], "unknown --outtype 'q3_weird'"),
        (["export", "gguf", base, "--adapter", tmp_path / "nope.gguf", "-o", tmp_path / "x.gguf"], "adapter file not found"),
        (["export", "gguf", base, "-o", base], "already exists"),
        (["export", "ollama", base, "--adapter", a1, "-o", tmp_path / "o"], "cannot write a Go template for this model's own chat template"),
        (["export", "gguf", base, "--chat-template", "klingon", "-o", tmp_path / "x.gguf"], "unknown chat template 'klingon'"),
    ]
    for args, message in cases:
        code, out, err = run_cli(*args)
        assert code != 0 and message in err and "Traceback" not in err, (args, err)
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "o").exists()
    narrow = convert_to_gguf(build_tiny(tmp_path / "narrow", arch="llama", hidden=32), tmp_path / "narrow.gguf", "f32", quiet=True).output
    with pytest.raises(InvalidModelError, match=r"does not fit this base: blk\.0\.\w+\.weight has ne \[32, \d+\]"):
        export_gguf(narrow, (str(a1),), tmp_path / "x.gguf", quiet=True)
    with pytest.raises(InvalidModelError, match="adapter llama-adapter-1.gguf is for 'llama', the base is 'gemma3'"):
        export_gguf(str(tiny["gemma3"][1]), (str(a1),), tmp_path / "x.gguf", quiet=True)
    with pytest.raises(InvalidModelError, match="not a LoRA adapter GGUF"):
        export_gguf(str(base), (str(base),), tmp_path / "x.gguf", quiet=True)
    with pytest.raises(UsageError, match="unknown --merged-type"):
        export_gguf(str(base), (), tmp_path / "x.gguf", merged_type="q2", quiet=True)
    with pytest.raises(ModelNotFoundError):
        export_gguf(str(hf / "nothing"), (), tmp_path / "x.gguf", quiet=True)
    assert not (tmp_path / "x.gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["narrow", "narrow.gguf"]  # no temp files left behind


def test_ollama_folder(tiny, tmp_path):
    from preflexor_local.convert.export_templates import ollama_template
    from preflexor_local.gguf_meta import read_gguf

    _, base, (a1, a2), _ = tiny["gemma3"]
    code, out, err = run_cli("export", "ollama", base, "--adapter", a1, "--chat-template", "chatml", "--system", "Be brief.", "-o", tmp_path / "o", "--json")
    assert code == 0, err
    assert json.loads(out)["files"] == ["Modelfile", "model.gguf"]
    modelfile = (tmp_path / "o" / "Modelfile").read_text()
    assert "FROM ./model.gguf\n" in modelfile and "ADAPTER" not in modelfile
    assert f'TEMPLATE """{ollama_template("chatml", "</s>")}"""\n' in modelfile  # the template the Go test proves
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "</s>"\n' in modelfile and "PARAMETER num_ctx 512\n" in modelfile
    assert 'SYSTEM "Be brief."' in modelfile and "Gemma Terms of Use" in modelfile  # a Gemma base carries the notice
    assert read_gguf(tmp_path / "o" / "model.gguf").get("preflexor.chat_template") == "chatml"
    code, _, err = run_cli("export", "ollama", base, "--adapter", a1, "--adapter", a2, "--chat-template", "chatml", "--as-adapter", "-o", tmp_path / "two")
    assert code != 0 and "Ollama applies one ADAPTER" in err and not (tmp_path / "two").exists()
    code, _, err = run_cli("export", "ollama", base, "--adapter", a1, "--chat-template", "chatml", "--as-adapter", "-o", tmp_path / "a")
    assert code == 0, err
    modelfile = (tmp_path / "a" / "Modelfile").read_text()
    assert "FROM ./base.gguf\nADAPTER ./adapter.gguf\n" in modelfile
    assert tensor_bytes(tmp_path / "a" / "base.gguf") == tensor_bytes(base)


def test_llama_server_folder_runs_its_command_line(tiny, tmp_path):
    """run.sh calls llama-server (here a stand-in that records its arguments) with files that exist; a scale is
    folded into the adapter's alpha; the Jinja file renders our format, with the thinking prefill on request."""
    from preflexor_local.prompt import ChatTemplate, _compile, render_prompt

    _, base, (a1, _), _ = tiny["llama"]
    code, _, err = run_cli("export", "llama-server", base, "--adapter", f"{a1}:0.5", "--as-adapter", "-o", tmp_path / "s")
    assert code == 0, err
    folder = tmp_path / "s"
    fake = tmp_path / "fake-llama-server"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    done = subprocess.run([str(folder / "run.sh"), "--port", "8088"], capture_output=True, text=True, env={**os.environ, "LLAMA_SERVER": str(fake)}, check=True)
    argv = json.loads(done.stdout)
    flag = lambda name: argv[argv.index(name) + 1]  # noqa: E731
    assert os.path.samefile(flag("-m"), folder / "base.gguf") and os.path.samefile(flag("--lora"), folder / "adapter.gguf")
    assert os.path.samefile(flag("--chat-template-file"), folder / "chat-template.jinja") and argv[-2:] == ["--port", "8088"]
    assert json.loads(flag("--chat-template-kwargs")) == {"enable_thinking": True} and "--jinja" in argv
    folded, _ = next_logits_gguf(folder / "base.gguf", adapters=(str(folder / "adapter.gguf"),))
    half, _ = next_logits_gguf(base, adapters=(f"{a1}:0.5",))
    assert np.abs(folded - half).max() < 1e-4  # adapter.gguf at scale 1 is the original at 0.5
    source = (folder / "chat-template.jinja").read_text()
    model_template = ChatTemplate("model", source, "<s>", "</s>")
    from tiny_model import CHAT_TEMPLATE

    ours = ChatTemplate("model", CHAT_TEMPLATE, "<s>", "</s>")
    assert render_prompt(model_template, MSGS) == render_prompt(ours, MSGS)
    with_thinking = _compile(source).render(messages=MSGS, add_generation_prompt=True, bos_token="<s>", eos_token="</s>", enable_thinking=True)
    assert with_thinking == render_prompt(ours, MSGS, prefill="<|thinking|>\n")


def test_lmstudio_folder(tiny, tmp_path):
    from preflexor_local.gguf_meta import read_gguf

    _, base, (a1, _), _ = tiny["llama"]
    code, out, err = run_cli("export", "lmstudio", base, "--adapter", a1, "-o", tmp_path / "lms", "--json")
    assert code == 0, err
    assert json.loads(out)["files"] == ["README.md", "lms.gguf"]
    assert "lms import lms.gguf" in (tmp_path / "lms" / "README.md").read_text()
    info = read_gguf(tmp_path / "lms" / "lms.gguf")
    assert info.get("preflexor.merged_adapters") == [f"{a1.name}:1"] and info.get("tokenizer.chat_template")
    code, _, err = run_cli("export", "lmstudio", base, "--adapter", a1, "-o", tmp_path / "lms")
    assert code != 0 and "already exists" in err
    code, _, err = run_cli("export", "lmstudio", base, "--adapter", a1, "-o", tmp_path / "lms", "--force")
    assert code == 0, err
