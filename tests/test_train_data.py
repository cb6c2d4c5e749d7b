"""Preference JSONL: validation with line numbers, rendering identical to inference, length checks."""

import json

import pytest
from train_fixtures import pair_rows, write_pairs

from preflexor_local.train.data import DataError, load_pairs, pair_from_obj, render_pair


def test_load_string_and_message_rows(tmp_path):
    rows = pair_rows(2)
    rows.append(
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why? Use <|thinking|>."}],
            "chosen": [{"role": "assistant", "content": "<|thinking|>\nx\n<|/thinking|>\ny"}],
            "rejected": [{"role": "assistant", "content": "z"}],
            "meta": {"source": "test"},
        }
    )
    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl", rows), require_thinking=True)
    assert len(pairs) == 3
    assert pairs[2].messages[0] == {"role": "system", "content": "Be brief."}
    assert pairs[2].chosen.endswith("y") and pairs[2].meta == {"source": "test"} and pairs[2].line == 3


def test_missing_columns_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(pair_rows(1)[0]) + "\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:2: missing column\(s\) rejected"):
        load_pairs(path)


def test_bad_json_and_empty_and_missing_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("{not json}\n" + json.dumps(pair_rows(1)[0]) + "\n")
    with pytest.raises(DataError, match=r":1: not valid JSON"):
        load_pairs(path)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_pairs(tmp_path / "e.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")


def test_interrupted_last_line_is_skipped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(pair_rows(1)[0]) + "\n" + '{"prompt": "cut by a cra')
    assert len(load_pairs(path)) == 1


def test_tags_missing_from_fixed_dataset(tmp_path):
    rows = pair_rows(3)
    rows[1]["chosen"] = "<|thinking|>\nopened, never closed"  # a reply without any thinking is a critic's row and loads
    with pytest.raises(DataError, match=r"1 of 3 chosen replies have no closing <\|/thinking\|> tag \(lines 2\)"):
        load_pairs(write_pairs(tmp_path / "p.jsonl", rows), require_thinking=True)


def test_rejected_cut_round_trips_and_must_be_a_boolean():
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "rejected_cut": True}
    pair = pair_from_obj(row)
    assert pair.rejected_cut and pair.to_json()["rejected_cut"] is True and "rejected_cut" not in pair.meta
    assert "rejected_cut" not in pair_from_obj({**row, "rejected_cut": False}).to_json()
    with pytest.raises(DataError, match="'rejected_cut' must be true or false"):
        pair_from_obj({**row, "rejected_cut": "yes"})


def test_fixed_pairs_rounds_walk_through_the_data_once_an_epoch(tmp_path):
    """Before, every round drew its steps from a fresh shuffle, so some pairs were never seen and others many times."""
    from preflexor_local.train.run import FixedPairs

    path = write_pairs(tmp_path / "p.jsonl", pair_rows(7))
    fixed = FixedPairs(path, per_round=3, seed=1)
    lines = [[p.line for p in fixed.pairs_for_round(r, lambda: None, tmp_path)] for r in range(5)]
    flat = [n for r in lines for n in r]
    assert all(len(r) == 3 for r in lines)
    assert sorted(flat[:7]) == list(range(1, 8)) and sorted(flat[7:14]) == list(range(1, 8))  # every pair once per epoch
    assert flat[:7] != flat[7:14]  # each epoch its own order
    resumed = FixedPairs(path, per_round=3, seed=1)  # a resumed run continues where it stopped
    assert [p.line for p in resumed.pairs_for_round(3, lambda: None, tmp_path)] == lines[3]
    assert [p.line for p in FixedPairs(path).pairs_for_round(4, lambda: None, tmp_path)] == list(range(1, 8))


def test_bad_messages():
    with pytest.raises(DataError, match="last message must be a user turn"):
        pair_from_obj({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"})
    with pytest.raises(DataError, match="exactly one assistant message"):
        pair_from_obj({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"})


def test_training_prompt_is_the_inference_prompt(tiny_llama):
    """The prompt ids the trainer sees equal what the transformers backend feeds the model at inference."""
    from preflexor_local import backends
    from preflexor_local.backends.base import GenerationRequest
    from preflexor_local.config import LoadOptions
    from preflexor_local.train.config import TrainConfig
    from preflexor_local.train.encode import Encoder, training_template

    backend = backends.load(str(tiny_llama), LoadOptions(device="cpu"))
    pair = pair_from_obj(pair_rows(1)[0])
    cfg = TrainConfig(model=str(tiny_llama), output="x").resolved()
    template = training_template(cfg, backend.tokenizer, "llama", tiny_llama.name)
    enc = Encoder(backend.tokenizer, template, 512).encode([pair])
    served = backend.encode(backend.render(GenerationRequest(messages=pair.messages)))
    assert enc.rows[0]["prompt_ids"] == served
    prompt, chosen, _ = render_pair(template, pair)
    assert chosen.startswith(pair.chosen) and chosen != pair.chosen  # reply + the template's end-of-turn
    tok = backend.tokenizer
    assert tok.convert_ids_to_tokens(enc.rows[0]["chosen_ids"][-1]) == "<|end|>"
    close = tok.convert_tokens_to_ids("<|/thinking|>")
    assert close in enc.rows[0]["chosen_ids"]  # a single token inside the completion
    backend.close()


def test_long_chosen_dropped_long_rejected_cut_and_counted(tiny_llama):
    from transformers import AutoTokenizer

    from preflexor_local.prompt import ChatTemplate
    from preflexor_local.train.encode import Encoder

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = pair_rows(3)
    rows[0]["chosen"] = rows[0]["chosen"] + " silk" * 200
    rows[1]["rejected"] = "bone " * 200
    pairs = [pair_from_obj(r, "p", i + 1) for i, r in enumerate(rows)]
    template = ChatTemplate("model", tok.chat_template, tok.bos_token, tok.eos_token)
    normal = Encoder(tok, template, 10_000).encode(pairs[2:]).rows[0]
    assert len(normal["prompt_ids"]) + max(len(normal["chosen_ids"]), len(normal["rejected_ids"])) < 120
    enc = Encoder(tok, template, 120).encode(pairs)
    assert enc.counts() == {"pairs_in": 3, "pairs_used": 2, "dropped_long": 1, "truncated_rejected": 1}
    assert enc.dropped_lines == [1]
    for row in enc.rows:
        assert len(row["prompt_ids"]) + len(row["rejected_ids"]) <= 120
        assert len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 120


def test_a_run_folder_means_its_merged_model(tmp_path):
    """One rule for every engine (issue 9, defect 2): Phase II is handed the Phase I run folder."""
    from preflexor_local.errors import InvalidModelError, ModelNotFoundError
    from preflexor_local.train.resolve import model_dir, model_name

    run = tmp_path / "phase1"
    (run / "merged").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    with pytest.raises(InvalidModelError, match="without a merged model") as exc:
        model_dir(run)  # --no-merge: nothing to continue from, and it says so
    assert "--resume" in exc.value.hint
    (run / "merged" / "config.json").write_text("{}")
    assert model_dir(str(run)) == run / "merged" and model_name(model_dir(run)) == "phase1"
    assert model_dir(run / "merged") == run / "merged"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(InvalidModelError, match="GGUF") as exc:
        model_dir(gguf)
    assert f"preflexor-local convert hf {gguf}" in exc.value.hint  # the command that exists
    with pytest.raises(ModelNotFoundError):
        model_dir(tmp_path / "nope")
    with pytest.raises(InvalidModelError, match="no config.json"):
        model_dir(tmp_path)


def test_atomic_outputs_appear_whole_or_not_at_all(tmp_path):
    from preflexor_local.atomic import atomic_dir, atomic_file, write_json

    target = tmp_path / "merged"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"] and (target / "old.txt").is_file()
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"] and [p.name for p in target.iterdir()] == ["new.txt"]
    with atomic_file(tmp_path / "w.safetensors") as tmp:
        assert tmp.suffix == ".safetensors"  # writers that append a missing suffix (mx.save_safetensors) write to tmp itself
        tmp.write_text("x")
    write_json(tmp_path / "state.json", {"round": 3})
    assert json.loads((tmp_path / "state.json").read_text()) == {"round": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "state.json", "w.safetensors"]
    with atomic_dir(target, keep_existing=True) as tmp:  # built the same folder as another process, which got there first
        (tmp / "ours.txt").write_text("ours")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir())[0] == "merged"
    with atomic_dir(tmp_path / "fresh", keep_existing=True) as tmp:
        (tmp / "ours.txt").write_text("ours")
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == ["ours.txt"]
    assert not list(tmp_path.glob(".*part*"))


def test_the_training_core_is_engine_free():
    """The MLX trainer and the shared core import neither the TRL engine nor torch (issue 9's redesign)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import preflexor_local.train.run, preflexor_local.train.encode, preflexor_local.train.resolve\n"
        "import preflexor_local.train.mlx.trainer, preflexor_local.train.mlx.batches, preflexor_local.train.mlx.fuse\n"
        "import preflexor_local.commands.train, preflexor_local.commands.data\n"
        "print(sorted(m for m in ('torch', 'trl', 'peft', 'transformers', 'preflexor_local.train.trl') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
