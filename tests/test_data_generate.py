"""Pair generation with real backends (the tiny model through transformers), a real store, a scripted judge."""

import itertools
import json

import pytest
from tiny_model import CORPUS
from train_fixtures import ScriptedBackend, fast_generation, generate_argv

from preflexor_local.errors import PreflexorError
from preflexor_local.format import parse
from preflexor_local.train.data import load_pairs
from preflexor_local.train.generate import GenerationConfig, PairGenerator, TeacherError, TextCorpus, graph_lines, open_corpus

FAST = dict(teacher_max_tokens=12, student_max_tokens=12, categories=("Reasoning Steps",), max_context_chars=300, k_search=1)


@pytest.fixture(scope="module")
def tiny_backend(tiny_llama):
    from preflexor_local import backends
    from preflexor_local.config import LoadOptions

    b = backends.load(str(tiny_llama), LoadOptions(device="cpu", ctx=4096))
    yield b
    b.close()


@pytest.mark.parametrize("phase", [1, 2])
def test_tiny_teacher_and_student_write_valid_pairs(tiny_backend, tmp_path, phase):
    out = tmp_path / "pairs.jsonl"
    gen = PairGenerator(tiny_backend, TextCorpus(CORPUS), GenerationConfig(phase=phase, seed=phase, **FAST), quiet=True)
    report = gen.generate(2, out, student=tiny_backend)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report.written == len(rows) == 2 and report.attempted >= 2
    assert sum(report.filtered.values()) == report.attempted - report.written
    for row in rows:
        assert set(row) - {"rejected_cut"} == {"prompt", "chosen", "rejected", "meta"}
        assert row["prompt"].endswith(" Use <|thinking|>.")
        parsed = parse(row["chosen"])
        assert parsed.thinking_closed and "**Reasoning Steps**:" in parsed.thinking and parsed.answer
        assert row["chosen"].startswith("<|thinking|>\n") and row["meta"]["phase"] == phase and len(row["meta"]["chunks"]) == 3
        if phase == 1:
            assert "<|thinking|>" not in row["rejected"] and "<|/thinking|>" not in row["rejected"]
    assert len(load_pairs(out, require_thinking=True)) == 2  # the trainer accepts what generation writes


def _scripted_teacher(question_for=lambda p: "What makes nacre so tough?"):
    def reply(prompt: str) -> str:
        if prompt.startswith("Read the passages"):
            return question_for(prompt)
        if "knowledge graph" in prompt:
            return "Here is the graph:\n[Nacre] -[IS-A]-> [Composite]\nnot a relation\n[tablets] -[influences]-> [crack path]\n"
        if "headed" in prompt:
            return "Tablets slide and deflect cracks."
        return "Nacre is tough because its tablets deflect cracks and slide."

    return ScriptedBackend(reply)


def test_judge_keeps_hardest_worse_candidate_and_counts_filtered(tmp_path):
    teacher = _scripted_teacher()
    answers = itertools.chain(["weak answer A", "good answer B", "decent answer C"], itertools.repeat("good answer D"))
    student = ScriptedBackend(lambda p: next(answers))
    scores = {"Nacre is tough because": 8, "weak": 2, "good": 9, "decent": 5}

    def judge_reply(prompt):
        cand = prompt.split("Candidate answer:\n")[1]
        return f"SCORE: {next(v for k, v in scores.items() if cand.startswith(k))}"

    judge = ScriptedBackend(judge_reply)
    out = tmp_path / "p.jsonl"
    gen = PairGenerator(teacher, TextCorpus(CORPUS), GenerationConfig(samples=3, judge=True, k_search=1), judge=judge, quiet=True)
    report = gen.generate(1, out, student=student)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report.written == 1 and rows[0]["rejected"] == "decent answer C"  # worse than the teacher (8), best of the worse
    assert rows[0]["meta"]["judge"] == {"chosen": 8.0, "rejected": 5.0, "candidates": [2.0, 9.0, 5.0]}
    assert report.filtered["student_not_worse"] == 1
    report2 = gen.generate(2, out, student=student, seed_offset=10)  # n counts the row there; every later candidate scores 9 >= 8: nothing kept
    assert report2.written == 0 and report2.filtered["student_not_worse"] == 3 * report2.attempted == 18
    assert len(out.read_text().splitlines()) == 1


def test_a_student_reply_cut_by_its_token_limit_is_marked_and_trained_without_end_of_turn(tmp_path, tiny_llama):
    """Before the fix a cut reply was scored as if the student had ended its turn there, teaching ORPO that ending is rejected."""
    from transformers import AutoTokenizer

    from preflexor_local.prompt import ChatTemplate
    from preflexor_local.train.encode import Encoder

    replies = itertools.cycle(["Nacre is soft because", "Nacre is weak."])
    student = ScriptedBackend(lambda p: next(replies), finish=lambda text: "eos" if text.endswith(".") else "length")
    out = tmp_path / "p.jsonl"
    PairGenerator(_scripted_teacher(), TextCorpus(CORPUS), GenerationConfig(k_search=1), quiet=True).generate(2, out, student=student)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["rejected"], r.get("rejected_cut", False)) for r in rows] == [("Nacre is soft because", True), ("Nacre is weak.", False)]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    enc = Encoder(tok, ChatTemplate("model", tok.chat_template, tok.bos_token, tok.eos_token), 4096).encode(load_pairs(out))
    end = tok.convert_tokens_to_ids("<|end|>")
    assert [r["rejected_ids"][-1] == end for r in enc.rows] == [False, True]
    assert all(r["chosen_ids"][-1] == end for r in enc.rows)
    assert tok.decode(enc.rows[0]["rejected_ids"]).strip() == "Nacre is soft because"


def test_graph_style_keeps_only_wellformed_relations(tmp_path):
    out = tmp_path / "p.jsonl"
    gen = PairGenerator(_scripted_teacher(), TextCorpus(CORPUS), GenerationConfig(style="graph", categories=("Hypothesis",)), quiet=True)
    gen.generate(1, out, student=ScriptedBackend(lambda p: "no idea"))
    thinking = parse(json.loads(out.read_text())["chosen"]).thinking
    assert thinking.startswith("**Knowledge Graph**:\n\n[Nacre] -[IS-A]-> [Composite]\n[tablets] -[INFLUENCES]-> [crack path]\n\n**Hypothesis**:")
    assert graph_lines("[A] -[RELATES-TO]-> [B]\nA -> B") == ["[A] -[RELATES-TO]-> [B]"]


def test_crash_keeps_pairs_already_written(tmp_path):
    calls = {"n": 0}

    def question(prompt):
        calls["n"] += 1
        return "What makes nacre so tough?" if calls["n"] == 1 else ""  # the teacher goes silent after one pair

    out = tmp_path / "p.jsonl"
    gen = PairGenerator(_scripted_teacher(question), TextCorpus(CORPUS), GenerationConfig(retries=2, k_search=0), quiet=True)
    with pytest.raises(TeacherError, match="the teacher gave no question after 2 tries"):
        gen.generate(3, out, student=ScriptedBackend(lambda p: "plain"))
    assert len(load_pairs(out)) == 1


def test_teacher_down_fails_loudly(tmp_path, capsys):
    from preflexor_local.app.cli import main

    (tmp_path / "c.txt").write_text("\n\n".join(CORPUS))
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "data",
                "generate",
                "--store",
                str(tmp_path / "c.txt"),
                "--teacher",
                "http://127.0.0.1:9/v1",
                "--student",
                "http://127.0.0.1:9/v1",
                "-n",
                "1",
                "-o",
                str(tmp_path / "o.jsonl"),
                "--retries",
                "2",
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "cannot reach the server at http://127.0.0.1:9/v1" in err and "Traceback" not in err


def test_empty_or_missing_store_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflexorError, match="has no text"):
        open_corpus(tmp_path / "empty")
    with pytest.raises(PreflexorError, match="no store at"):
        open_corpus(tmp_path / "missing.db")


@pytest.mark.slow
def test_real_store_through_the_cli(tmp_path, tiny_llama, capsys):
    from preflexor_local.app.cli import main
    from preflexor_local.rag import open_store

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(CORPUS):
        (docs / f"d{i}.txt").write_text(text)
    db = tmp_path / "bio.db"
    assert main_ok(main, ["index", "add", str(docs), "--store", str(db)])
    empty = tmp_path / "empty.db"
    open_store(empty).close()
    with pytest.raises(SystemExit):
        main(generate_argv(empty, tiny_llama, tmp_path / "x.jsonl"))
    assert "empty" in capsys.readouterr().err
    out = tmp_path / "pairs.jsonl"
    assert main_ok(
        main,
        generate_argv(db, tiny_llama, out, 1, *fast_generation(12, 12, k_random=2), "--json"),
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["written"] == 1 and len(load_pairs(out, require_thinking=True)) == 1


def main_ok(main, argv) -> bool:
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code in (0, None)
    return True


@pytest.mark.slow
def test_active_learning_rounds_regenerate_with_the_live_student(tmp_path, tiny_llama, capsys):
    from preflexor_local.app.cli import main

    (tmp_path / "c.txt").write_text("\n\n".join(CORPUS))
    out = tmp_path / "run"
    assert main_ok(
        main,
        [*train_from_store("orpo", tiny_llama, tmp_path / "c.txt", out, rounds=2), *fast_generation(10, 10)],
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["global_step"] == 2 and [r["round"] for r in result["rounds"]] == [0, 1]
    for r in (0, 1):
        pairs = load_pairs(out / "rounds" / f"pairs-{r:04d}.jsonl", require_thinking=True)
        assert len(pairs) == 1
        assert result["rounds"][r]["generation"]["written"] == 1
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "merged").exists()


def train_from_store(method: str, model, store, out, rounds: int) -> list[str]:
    """``train METHOD`` with pairs generated each round from ``store`` (``model`` as teacher): one step, one pair a round."""
    args = ["train", method, "--model", str(model), "--store", str(store), "--teacher", str(model), "--rounds", str(rounds)]
    return [*args, "--steps-per-round", "1", "--pairs-per-round", "1", "--no-merge", "-o", str(out), "--json"]


def test_clean_question():
    from preflexor_local.train.generate import clean_question

    assert clean_question("Question: What makes nacre tough? It is the tablets.") == "What makes nacre tough?"
    assert clean_question("\n**Q:** Why do bones remodel so often\nmore") == "Why do bones remodel so often"
    assert clean_question("10,000,000.") == "" and clean_question("") == ""


def test_data_generate_writes_the_tags_asked_for(tmp_path, tiny_llama, capsys):
    """Issue 9, defect 3: `data generate --tags think` writes <think> pairs (it had no --tags at all)."""
    from preflexor_local.app.cli import main
    from preflexor_local.format import ThinkingFormat

    (tmp_path / "c.txt").write_text("\n\n".join(CORPUS))
    out = tmp_path / "pairs.jsonl"
    assert main_ok(
        main,
        generate_argv(tmp_path / "c.txt", tiny_llama, out, 1, "--tags", "think", "--json", *fast_generation()),
    ), capsys.readouterr().err
    row = json.loads(out.read_text().splitlines()[0])
    assert row["prompt"].endswith(" Use <think>.") and row["chosen"].startswith("<think>\n") and "</think>" in row["chosen"]
    assert "<|thinking|>" not in row["chosen"]
    assert len(load_pairs(out, ThinkingFormat.preset("think"), require_thinking=True)) == 1


def test_train_dpo_tags_think_generates_think_pairs_and_masks_on_them(tmp_path, tiny_llama, capsys):
    """Issue 9, defect 3: `train dpo --tags think --store … --teacher …` generated <|thinking|> pairs, then masked on </think>."""
    from preflexor_local.app.cli import main

    (tmp_path / "c.txt").write_text("\n\n".join(CORPUS))
    out = tmp_path / "run"
    assert main_ok(
        main,
        [*train_from_store("dpo", tiny_llama, tmp_path / "c.txt", out, rounds=1), "--tags", "think", *fast_generation()],
    ), capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (out / "rounds" / "pairs-0000.jsonl").read_text().splitlines()]
    assert rows and all("</think>" in r["chosen"] and "<|/thinking|>" not in r["chosen"] for r in rows)
    assert result["rounds"][0]["ignored_thinking_tokens"] > 0  # the DPO mask found </think> in the chosen replies


@pytest.mark.parametrize(
    "cmd,words",
    [
        (["data", "generate", "--samples", "0"], "--samples must be at least 1, got 0"),
        (["data", "generate", "--phase", "3"], "--phase must be at least 1 and at most 2, got 3"),
        (["data", "generate", "--tags", "xml"], "--tags must be one of preflexor, think"),
        (["data", "generate", "-n", "0"], "--pairs-per-round must be at least 1"),
        (["train", "orpo", "--model", "m", "-o", "o", "--k-random", "0"], "--k-random must be at least 1"),
        (["train", "dpo", "--model", "m", "-o", "o", "--style", "tree"], "--style must be one of sections, graph"),
        (["train", "preflexor", "--model", "m", "-o", "o", "--phase2-rounds", "0"], "--phase2-rounds must be at least 1"),
        (["train", "preflexor", "--model", "m", "-o", "o", "--loss", "nope"], "--loss must be one of exo_pair"),
    ],
)
def test_generation_settings_refuse_out_of_range_values(cmd, words, tmp_path, monkeypatch):
    """Generation settings are typed settings: one line, exit 2, the same words as GenerationConfig(...) in Python."""
    from convert_cli import run_cli

    monkeypatch.chdir(tmp_path)
    extra = [] if cmd[0] == "train" else ["--student", "s", "-o", "p.jsonl"]
    code, _, err = run_cli(*cmd, *extra)
    assert code == 2 and words in err and "Traceback" not in err, err
    with pytest.raises(PreflexorError, match="--samples must be at least 1"):
        GenerationConfig(samples=0)


@pytest.mark.slow
def test_concurrency_keeps_several_teacher_requests_in_flight_and_writes_exactly_n(tmp_path, tiny_llama):
    """A real teacher server (the default model) taking two requests at once (serve --parallel 2); the in-process student takes turns."""
    import threading
    import time

    from serve_fixtures import server_env, start_server

    from preflexor_local import backends
    from preflexor_local.config import LoadOptions

    server = start_server(["--ctx", "1024", "--parallel", "2", "--thinking-budget", "8"], tmp_path, server_env(tmp_path / "home"))
    student = backends.load(str(tiny_llama), LoadOptions(device="cpu", ctx=4096))
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(server.health()["running"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        teacher = backends.load(server.url, LoadOptions())
        gen = PairGenerator(teacher, TextCorpus(CORPUS), GenerationConfig(concurrency=3, seed=7, **FAST), quiet=True)
        out = tmp_path / "pairs.jsonl"
        report = gen.generate(3, out, student=student)
    finally:
        stop.set()
        watcher.join()
        student.close()
        assert server.stop() == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # No pair lost or doubled, never more than n though three were in flight; fewer only when the teacher's short
    # replies (sampled, 12 tokens) were filtered until the question budget max(3n, n + 5) ran out.
    assert report.written == len(rows) >= 1, report.to_dict()
    assert report.written == 3 or report.attempted == 9, report.to_dict()
    assert sum(report.filtered.values()) == report.attempted - report.written
    assert all(parse(r["chosen"]).thinking_closed for r in rows)
    assert max(seen) == 2  # the teacher had two requests running at once
    assert len(load_pairs(out, require_thinking=True)) == len(rows)


def test_concurrency_with_an_in_process_teacher_is_ignored_with_a_note(tiny_backend, tmp_path, capsys):
    gen = PairGenerator(tiny_backend, TextCorpus(CORPUS), GenerationConfig(concurrency=4, **FAST))
    report = gen.generate(1, tmp_path / "p.jsonl", student=tiny_backend)
    assert report.written == 1
    assert "note: --concurrency 4 ignored: the teacher is an in-process model" in capsys.readouterr().err
