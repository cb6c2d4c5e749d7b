"""Real TRL + PEFT on the tiny model (CPU): ORPO, DPO (exo_pair, sigmoid), masks in the trainer's batch, resume, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_fixtures import pair_rows, write_pairs

from preflexor_local.train.config import TrainConfig
from preflexor_local.train.data import pair_from_obj
from preflexor_local.train.session import RunContext

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def _session(tiny, tmp_path, method, **kw):
    from preflexor_local.train.trl import open_session

    cfg = TrainConfig(model=str(tiny), output=str(tmp_path), method=method, lr=5e-3, **kw).resolved()
    logs = []
    return open_session(cfg, RunContext(tmp_path, log=logs.append, quiet=True)), logs


def _pairs(n=4):
    return [pair_from_obj(r, "t", i + 1) for i, r in enumerate(pair_rows(n))]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_orpo_moves_loss_and_changes_only_adapter_and_tag_rows(tiny_llama, tmp_path):
    session, logs = _session(tiny_llama, tmp_path, "orpo", adapter="lora")
    before = _params(session.model)
    trainable = {n for n, p in session.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    summary = session.train_round(_pairs(), 8, 0)
    after = _params(session.model)
    changed = {n for n in before if not bool((before[n] == after[n]).all())}
    assert changed and changed <= trainable  # base weights untouched
    assert any("lora_B" in n for n in changed) and any("trainable_tokens" in n for n in changed)
    losses = [r["loss"] for r in logs]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert summary["pairs_used"] == 4 and summary["dropped_long"] == 0
    session.close()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["exo_pair", "sigmoid"])
def test_dpo_losses_move_and_change_adapter(tiny_llama, tmp_path, loss):
    session, logs = _session(tiny_llama, tmp_path, "dpo", loss=loss)
    assert session.cfg.label_smoothing == (1e-3 if loss == "exo_pair" else 0.0)
    before = _params(session.model)
    session.train_round(_pairs(), 6, 0)
    after = _params(session.model)
    changed = {n for n in before if not bool((before[n] == after[n]).all())}
    assert changed and all("lora_" in n for n in changed)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    session.close()


@pytest.mark.slow
def test_dpo_reference_stays_the_model_without_the_adapter_across_rounds(tiny_llama, tmp_path):
    session, logs = _session(tiny_llama, tmp_path, "dpo")
    session.train_round(_pairs(), 3, 0)
    session.train_round(_pairs(), 2, 1)  # failed: TRL copied the trained adapter as "ref" again
    assert set(session.model.peft_config) == {"default"}
    # the first step of round 2 scores against the base: a reference copied from round 1's policy would give 0
    assert abs(logs[3]["rewards/chosen"]) > 1e-4 and abs(logs[3]["rewards/margins"]) > 1e-4
    session.close()


def _captured(tiny_llama, tmp_path, method: str, pairs: int, steps: int, **kw):
    """A session that has trained ``steps`` steps on ``pairs`` pairs, every batch it was given kept in ``capture``."""
    session, _ = _session(tiny_llama, tmp_path, method, **kw)
    session.capture = []
    session.train_round(_pairs(pairs), steps, 0)
    return session


def _prompt_len(tok, ids):
    """Independent of the code under test: the tiny template's prompt ends with the last <|assistant|>."""
    a = tok.convert_tokens_to_ids("<|assistant|>")
    return max(i for i, t in enumerate(ids) if t == a) + 1


@pytest.mark.slow
def test_dpo_thinking_mask_is_exact_in_the_trainer_batch(tiny_llama, tmp_path):
    session = _captured(tiny_llama, tmp_path, "dpo", 4, 2, batch_size=2, grad_accum=1)
    tok = session.tokenizer
    close = tok.convert_tokens_to_ids("<|/thinking|>")
    rows = 0
    for batch in session.capture:
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)  # what DPOTrainer computes
        for ids, att, lab in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), labels.tolist()):
            n = sum(att)
            ids, lab = ids[:n], lab[:n]
            p = _prompt_len(tok, ids)
            closes = [i for i in range(p, n) if ids[i] == close]
            start = closes[-1] if closes else p  # keep_close_tag: the tag itself is scored
            assert all(x == -100 for x in lab[:start]), (ids, lab)
            assert lab[start:] == ids[start:]
            rows += 1
    assert rows == 8  # 2 steps x (2 chosen + 2 rejected)
    session.close()


@pytest.mark.slow
def test_dpo_partial_mask_redrawn_each_batch(tiny_llama, tmp_path):
    session = _captured(tiny_llama, tmp_path, "dpo", 4, 3, partial_mask_p=0.5, batch_size=4, grad_accum=1)
    tok = session.tokenizer
    close = tok.convert_tokens_to_ids("<|/thinking|>")
    seen: dict[tuple, list[tuple]] = {}
    for batch in session.capture:
        for ids, att, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["completion_mask"].tolist()):
            n = sum(att)
            ids, mask = ids[:n], mask[:n]
            if close not in ids:
                continue
            p = _prompt_len(tok, ids)
            e = max(i for i, t in enumerate(ids) if t == close)
            assert sum(1 - m for m in mask[p:e]) == int((e - p) * 0.5)  # exactly the fraction, inside the thinking
            assert all(mask[e:]) and not any(mask[:p])
            seen.setdefault(tuple(ids), []).append(tuple(mask))
    repeated = [m for m in seen.values() if len(m) > 1]
    assert repeated and all(len(set(m)) > 1 for m in repeated)  # a new draw every batch
    session.close()


@pytest.mark.slow
def test_orpo_labels_completion_only(tiny_llama, tmp_path):
    session = _captured(tiny_llama, tmp_path, "orpo", 2, 1, batch_size=2, grad_accum=1)
    tok = session.tokenizer
    batch = session.capture[0]
    for side in ("chosen", "rejected"):
        for ids, lab, att in zip(batch[f"{side}_input_ids"].tolist(), batch[f"{side}_labels"].tolist(), batch[f"{side}_attention_mask"].tolist()):
            n = sum(att)
            p = _prompt_len(tok, ids[:n])
            assert all(x == -100 for x in lab[:p]) and lab[p:n] == ids[p:n]
    session.close()


@pytest.mark.slow
def test_untagged_model_gets_tags_as_trained_single_tokens(tmp_path):
    from tiny_model import build_tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_llama(tmp_path / "untagged", tags=False)
    from preflexor_local.train.run import train

    data = write_pairs(tmp_path / "p.jsonl", pair_rows(4))
    result = train(TrainConfig(model=str(base), output=str(tmp_path / "out"), method="orpo", data=str(data), steps_per_round=3, lr=5e-3), quiet=True)
    merged = Path(result.final["merged"])
    tok = AutoTokenizer.from_pretrained(merged)
    ids = [tok.encode(t, add_special_tokens=False) for t in ("<|thinking|>", "<|/thinking|>")]
    assert all(len(i) == 1 for i in ids)
    model = AutoModelForCausalLM.from_pretrained(merged)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] >= len(tok) and emb.shape[0] % 64 == 0
    # mean-initialised rows of never-seen tokens stay equal; the trained tag rows moved away from them
    spare = emb[len(tok) :] if emb.shape[0] > len(tok) else None
    t0, t1 = emb[ids[0][0]], emb[ids[1][0]]
    assert not bool((t0 == t1).all())
    if spare is not None and len(spare):
        assert not bool((t0 == spare[0]).all())
    assert (merged / "chat_template.jinja").is_file() or tok.chat_template


@pytest.mark.slow
def test_resume_after_kill_between_rounds(tiny_llama, tmp_path):
    data = write_pairs(tmp_path / "p.jsonl", pair_rows(6))
    out = tmp_path / "run"
    args = [
        sys.executable,
        *orpo_argv(tiny_llama, data, out),
        "--rounds",
        "3",
        "--steps-per-round",
        "2",
        "--lr",
        "5e-3",
        "--json",
    ]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "rounds" / "round-0000" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "rounds").glob("round-*"))
    assert done and "round-0002" not in done and not (out / "merged").exists()
    last = int(done[-1].split("-")[1])
    from preflexor_local.train.run import train

    with pytest.raises(Exception, match="already holds a run"):  # without --resume it refuses to overwrite
        train(TrainConfig(model=str(tiny_llama), output=str(out), data=str(data), rounds=3, steps_per_round=2), quiet=True)
    r = subprocess.run([*args, "--resume"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert [x["round"] for x in result["rounds"]] == list(range(last + 1, 3))
    assert result["global_step"] == 6
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_at_round"] == last + 1
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"round"' in line and json.loads(line)["type"] == "round"]
    assert [x["round"] for x in rounds] == [0, 1, 2] and [x["global_step"] for x in rounds] == [2, 4, 6]
    assert [x["pairs_in"] for x in rounds] == [4, 4, 4]  # 2 steps x 2 accumulated pairs: each round its share of the data
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line)["type"] == "step"]
    assert steps[-2:] == [5, 6]
    assert (out / "merged" / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_two_process_gloo(tiny_llama, tmp_path):
    """torchrun (what `accelerate launch --multi_gpu` runs) with 2 CPU processes: data is sharded, one result."""
    data = write_pairs(tmp_path / "p.jsonl", pair_rows(4))
    out = tmp_path / "ddp"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            *orpo_argv(tiny_llama, data, out),
            "--steps-per-round",
            "2",
            "--json",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.strip().splitlines()) == 1 and json.loads(r.stdout)["global_step"] == 2
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line)["type"] == "step"]
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["epoch"] == 1.0  # 4 pairs = 2 processes x batch 1 x grad-accum 2: one epoch per step


def test_cli_errors_are_one_line(tmp_path, tiny_llama, capsys):
    from preflexor_local.app.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    for argv, expect in [
        (["train", "orpo", "--model", str(tiny_llama), "--data", str(bad), "-o", str(tmp_path / "o1")], "bad.jsonl:1: missing column(s) rejected"),
        (["train", "orpo", "--model", str(tmp_path / "nope"), "--data", str(bad), "-o", str(tmp_path / "o2")], "bad.jsonl:1"),
        (["train", "dpo", "--model", str(tiny_llama), "-o", str(tmp_path / "o3")], "nothing to train on"),
        (["train", "dpo", "--model", str(tiny_llama), "--data", str(bad), "--loss", "nope", "-o", str(tmp_path / "o4")], "unknown DPO loss"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code in (1, 2) and expect in err and "Traceback" not in err, err


@pytest.mark.parametrize("tied", [False, True])
def test_fast_trainable_tokens_equal_peft(tmp_path, tied):
    import torch
    from convert_fixtures import build_tiny
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from preflexor_local.train.trl.peft import fast_trainable_tokens

    path = build_tiny(tmp_path / "m", arch="gemma3" if tied else "llama", tied=tied)
    model = AutoModelForCausalLM.from_pretrained(path)
    n = model.get_input_embeddings().weight.shape[0]
    idx = [3, 7, n - 1]
    tti = {"embed_tokens": idx} if tied else {"embed_tokens": idx, "lm_head": idx}
    pm = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", trainable_token_indices=tti))
    torch.manual_seed(0)
    for name, p in pm.named_parameters():
        if "trainable_tokens_delta" in name:
            p.data += torch.randn_like(p)
    x = torch.tensor([[1, 3, 5, 7, n - 1, 9, 3]])
    ref = pm(input_ids=x).logits
    ref.sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in pm.named_parameters() if p.grad is not None}
    pm.zero_grad()
    fast_trainable_tokens(pm)
    out = pm(input_ids=x).logits
    out.sum().backward()
    assert torch.allclose(ref, out, atol=1e-5, rtol=1e-5)
    for k, g in ref_grads.items():
        assert torch.allclose(g, dict(pm.named_parameters())[k].grad, atol=1e-4, rtol=1e-4), k


@pytest.mark.slow
def test_orpo_forward_scores_only_reply_positions_and_equals_full_logits(tiny_llama, tmp_path):
    """The trimmed ORPO forward (logits only where a label is scored) equals the full forward."""
    import torch

    session = _captured(tiny_llama, tmp_path, "orpo", 2, 1, batch_size=2, grad_accum=1)
    trainer, batch = session.last_trainer, session.capture[0]
    model = session.model.eval()
    with torch.no_grad():
        chosen, rejected, _, _, nll = trainer.concatenated_forward(model, batch)
        cb = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=trainer.padding_value, device="cpu")
        logits = model(cb["concatenated_input_ids"], attention_mask=cb["concatenated_attention_mask"]).logits
        full = trainer.get_batch_logps(logits, cb["concatenated_labels"], average_log_prob=True)
        labels = cb["concatenated_labels"][:2, 1:]
        ce = torch.nn.functional.cross_entropy(logits[:2, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(torch.cat([chosen, rejected]), full, atol=1e-5)
    assert torch.allclose(nll, ce, atol=1e-5)  # the SFT term scores the reply only, never the prompt
    session.close()


@pytest.mark.slow
def test_plain_text_tags_add_no_tokens_and_mask_on_the_tag_sequence(tmp_path):
    """--tag-tokens plain: the vocabulary stays as it is (what a LoRA GGUF needs); the DPO mask finds the multi-token tag."""
    from tiny_model import build_tiny_llama

    base = build_tiny_llama(tmp_path / "notags", tags=False)
    session, _ = _session(base, tmp_path / "run", "dpo", adapter="lora", tag_tokens="plain", batch_size=2, grad_accum=1)
    assert not session.added_tags and len(session.rule.close_ids) > 1
    rows = session.model.get_input_embeddings().weight.shape[0]
    session.capture = []
    session.train_round(_pairs(2), 1, 0)
    assert session.model.get_input_embeddings().weight.shape[0] == rows
    assert not any("trainable_tokens" in n for n, _ in session.model.named_parameters())
    batch = session.capture[0]
    close = list(session.rule.close_ids)
    for ids, mask in zip(batch["input_ids"].tolist()[:2], batch["completion_mask"].tolist()[:2]):  # the chosen rows
        at = max(i for i in range(len(ids)) if ids[i : i + len(close)] == close)
        assert mask[at] == 1 and mask[at - 1] == 0  # the tag counts, the thinking before it does not
    session.close()


def test_student_is_the_transformers_backend_over_the_live_model(tiny_llama, tmp_path):
    """One sampler per framework: the training student is the transformers backend, so it answers exactly as
    `ask --model DIR` does on the same weights (greedy and seeded sampling alike)."""
    from preflexor_local import backends
    from preflexor_local.backends.base import GenerationRequest
    from preflexor_local.backends.transformers import TransformersBackend
    from preflexor_local.config import LoadOptions, Sampling

    session, _ = _session(tiny_llama, tmp_path, "dpo", device="cpu")  # DPO: LoRA B = 0, so the live model is the base model
    student = session.student()
    assert isinstance(student, TransformersBackend)
    served = backends.load(str(tiny_llama), LoadOptions(device="cpu"))
    messages = [{"role": "user", "content": "Why is spider silk tough? Use <|thinking|>."}]
    for sampling in (Sampling(temperature=0.0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=16), Sampling(temperature=0.9, seed=7, max_tokens=16)):
        req = GenerationRequest(messages=messages, prefill="<|thinking|>", sampling=sampling)
        assert student.render(req) == served.render(req)
        want = served.generate(req)
        assert want.completion_tokens > 0 and student.generate(req).text == want.text
    served.close()
    session.close()


@pytest.mark.slow
def test_sft_runs_only_the_chosen_rows_and_its_loss_is_their_nll(tiny_llama, tmp_path):
    """SFT never forwards the rejected replies (half an ORPO step's work); its loss is the chosen replies' NLL."""
    import torch

    session, logs = _session(tiny_llama, tmp_path, "sft", batch_size=2, grad_accum=1)
    rows_seen = []
    hook = session.model.get_base_model().model.register_forward_hook(lambda mod, args, kw, out: rows_seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    session.capture = []
    session.train_round(_pairs(4), 4, 0)
    hook.remove()
    assert rows_seen == [2, 2, 2, 2]  # ORPO runs chosen + rejected: 4 rows a step
    trainer, batch = session.last_trainer, session.capture[-1]
    model = session.model.eval()
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(model, batch)
        logits = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
        labels = batch["chosen_labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, ce, atol=1e-5) and set(metrics) == {"nll_loss", "logps/chosen"}
    assert [r["loss"] for r in logs][-1] < logs[0]["loss"]
    session.close()


@pytest.mark.slow
def test_end_weight_weights_the_end_of_turn_label_of_the_chosen_reply(tiny_llama, tmp_path):
    """--end-weight W: the chosen reply's first end-of-turn label counts W times in the NLL (a weighted mean)."""
    import torch

    session, _ = _session(tiny_llama, tmp_path, "sft", batch_size=2, grad_accum=1, end_weight=7.0)
    pairs = _pairs(2)
    enc = session.encoder.encode(pairs)
    tok = session.tokenizer
    for row, pair in zip(enc.rows, pairs):
        end = row["chosen_end"]
        reply = tok.decode(row["chosen_ids"][:end])
        assert reply.endswith("hierarchical structure.") and pair.chosen.endswith(reply.strip()[-20:])
        assert "structure" not in tok.decode(row["chosen_ids"][end:])  # what follows is the template's end of turn
    session.capture = []
    session.train_round(pairs, 1, 0)
    trainer, batch = session.last_trainer, session.capture[0]
    at = [int(a) for a in batch["chosen_end_at"]]
    assert all(a > 0 for a in at)
    model = session.model.eval()
    with torch.no_grad():
        loss, _ = trainer.get_batch_loss_metrics(model, batch)
        logits = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
        labels = batch["chosen_labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
        w = (labels != -100).float()
        for i, a in enumerate(at):
            assert w[i, a - 1] == 1
            w[i, a - 1] = 7.0
        expected = (ce * w).sum() / w.sum()
        plain = (ce * (labels != -100)).sum() / (labels != -100).sum()
    assert torch.allclose(loss, expected, atol=1e-5) and abs(float(loss - plain)) > 1e-4
    session.close()


def test_end_weight_refused_for_dpo():
    from preflexor_local.errors import UsageError

    with pytest.raises(UsageError, match="applies to ORPO and SFT"):
        TrainConfig(model="m", output="o", method="dpo", end_weight=5.0).resolved()


def orpo_argv(model, data, out) -> list[str]:
    """``python -m preflexor_local train orpo`` on ``data`` into ``out`` (after the interpreter)."""
    return ["-m", "preflexor_local", "train", "orpo", "--model", str(model), "--data", str(data), "-o", str(out)]
