"""Prove that GGUF and MLX copies of a Hugging Face checkpoint behave the same.

Checks (each a row of the table; any failure -> non-zero exit):

* ``tag <t>`` — the tag encodes to exactly one id in HF, GGUF and MLX, the same
  id everywhere, and GGUF stores it as CONTROL (special) or USER_DEFINED.
* ``chat template`` — present in every copy (or absent in every copy, for base
  models), identical text, and the same rendered prompt.
* ``tokenize`` — the same ids for a set of tricky strings (whitespace runs,
  tabs/newlines, emoji, CJK, accents, code, the tags inside text).
* ``greedy`` — f32/f16 GGUF and unquantised MLX: the same greedy tokens as
  transformers. Quantised copies: on the transformers greedy sequence
  (teacher-forced), the top-1 agreement rate must reach ``TOP1_TOLERANCE`` for
  the type and the mean |logit error| relative to the std of the HF logits must
  stay under ``LOGIT_TOLERANCE``; the max |logit error| is reported.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

from dataclasses import asdict, dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError, ModelNotFoundError
from preflexor_local.format import ThinkingFormat

TRICKY = [
    "Hello world",
    "  two leading spaces, trailing   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "emoji 😀🧵🕷️ and accents: café naïve Ångström",
    "CJK 蜘蛛の糸は強い。蜘蛛丝很坚韧 거미줄",
    "def f(x):\n    return {'a': x**2}  # code\n",
    "numbers 1234567 3.14159 -42",
]
# (top-1 agreement at least, mean |dlogit| / std(HF logits) at most) by weight type
TOLERANCES = {
    "bf16": (0.95, 0.05),
    "q8_0": (0.90, 0.10),
    "q6_k": (0.85, 0.15),
    "q5_k": (0.80, 0.25),
    "q5_0": (0.80, 0.25),
    "q5_1": (0.80, 0.25),
    "q4_k": (0.70, 0.35),
    "q4_0": (0.70, 0.40),
    "q4_1": (0.70, 0.40),
    "iq4": (0.70, 0.40),
    "q3_k": (0.55, 0.60),
    "q2_k": (0.40, 0.90),
    "mlx-8": (0.90, 0.10),
    "mlx-6": (0.85, 0.15),
    "mlx-5": (0.80, 0.25),
    "mlx-4": (0.70, 0.40),
    "mlx-3": (0.55, 0.60),
    "mlx-2": (0.40, 0.90),
}
EXACT_TYPES = ("f32", "f16")
TOKEN_TYPE_NAMES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VerifyReport:
    hf: str
    gguf: str | None
    mlx: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def to_dict(self) -> dict:
        return {"hf": self.hf, "gguf": self.gguf, "mlx": self.mlx, "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}

    def table(self) -> str:
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"{'check':<{width}}  result  detail"]
        lines += [f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL':<6}  {c.detail}" for c in self.checks]
        lines.append(f"{'overall':<{width}}  {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def gguf_weight_type(path: str | Path) -> str:
    """The dominant weight type of a GGUF (general.file_type), as a lowercase name like "f16", "q4_k"."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    f = reader.fields.get("general.file_type")
    if f is None:
        return "unknown"
    ftype = gguf.LlamaFileType(int(f.parts[f.data[0]][0]))
    name = ftype.name.replace("MOSTLY_", "").replace("ALL_", "").lower()
    return name


def _tolerance(wtype: str) -> tuple[float, float]:
    for key, tol in TOLERANCES.items():
        if wtype.startswith(key):
            return tol
    return (0.5, 1.0)


def _gguf_token_types(path: Path, ids: list[int]) -> dict[int, int]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    f = reader.fields["tokenizer.ggml.token_type"]
    return {i: int(f.parts[f.data[i]][0]) for i in ids}


class _HF:
    def __init__(self, path: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=True)

    def logits(self, ids: list[int]):
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        import torch

        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=self.tok.pad_token_id or 0, min_new_tokens=n
            )
        return out[0][len(ids) :].tolist()


class _GGUF:
    def __init__(self, path: Path, n_ctx: int):
        from preflexor_local.backends.llamacpp_load import open_llama

        self.llm = open_llama(path, n_ctx=n_ctx, logits_all=True, n_threads=2)
        self.add_bos = bool(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "false") in ("true", True, "1"))
        self.n_vocab = self.llm.n_vocab()

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=True)

    def logits(self, ids: list[int]):
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        import numpy as np

        seq = list(ids)
        out = []
        for _ in range(n):  # argmax on our side: no sampler settings can interfere
            nxt = int(np.argmax(self.logits(seq)[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out

    def close(self):
        self.llm.close()


class _MLX:
    def __init__(self, path: Path):
        from mlx_lm import load

        self.model, self.tok = load(str(path))
        import json

        cfg = json.loads((path / "config.json").read_text())
        q = cfg.get("quantization") or cfg.get("quantization_config")
        self.wtype = f"mlx-{q['bits']}" if isinstance(q, dict) and "bits" in q else "float"

    def encode(self, text: str) -> list[int]:
        return self.tok._tokenizer.encode(text, add_special_tokens=True)

    def logits(self, ids: list[int]):
        import mlx.core as mx
        import numpy as np

        out = self.model(mx.array([ids]))
        return np.array(out[0].astype(mx.float32))

    def greedy(self, ids: list[int], n: int) -> list[int]:
        import numpy as np

        seq, out = list(ids), []
        for _ in range(n):
            nxt = int(np.argmax(self.logits(seq)[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two greedy runs differ; one that stopped early differs where it stopped."""
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return None if k == len(a) == len(b) else k


def _compare_logits(report: VerifyReport, label: str, wtype: str, hf: _HF, other, prompts_ids: list[list[int]], n: int) -> None:
    import numpy as np

    if wtype in EXACT_TYPES or wtype == "float":
        agree, total = 0, 0
        firsts = []
        for ids in prompts_ids:
            a, b = hf.greedy(ids, n), other.greedy(ids, n)
            total += 1
            agree += a == b
            if a != b:
                firsts.append(f"differs at token {first_difference(a, b)}")
        # logit error on the first prompt (informative)
        ids = prompts_ids[0]
        lh, lo = hf.logits(ids), other.logits(ids)
        v = min(lh.shape[1], lo.shape[1])
        err = float(np.abs(lh[:, :v] - lo[:, :v]).max())
        report.add(
            f"greedy {label}",
            agree == total,
            f"{agree}/{total} prompts give the same {n} greedy tokens ({wtype}); max |dlogit| {err:.2e}" + (f"; {', '.join(firsts)}" if firsts else ""),
        )
        return
    top1_min, rel_max = _tolerance(wtype)
    agree = total = 0
    max_err = 0.0
    rel = []
    for ids in prompts_ids:
        seq = ids + hf.greedy(ids, n)
        lh, lo = hf.logits(seq), other.logits(seq)
        v = min(lh.shape[1], lo.shape[1])
        lh, lo = lh[len(ids) - 1 :, :v], lo[len(ids) - 1 :, :v]
        agree += int((lh.argmax(-1) == lo.argmax(-1)).sum())
        total += lh.shape[0]
        d = np.abs(lh - lo)
        max_err = max(max_err, float(d.max()))
        rel.append(float(d.mean() / (lh.std() + 1e-9)))
    rate, r = agree / max(total, 1), float(np.mean(rel))
    report.add(
        f"top-1 {label}",
        rate >= top1_min and r <= rel_max,
        f"{wtype}: top-1 agreement {rate:.1%} (needs >= {top1_min:.0%}), mean |dlogit|/std {r:.3f} (needs <= {rel_max}), max |dlogit| {max_err:.3f}",
    )


def verify(
    hf_dir: str | Path,
    gguf_path: str | Path | None = None,
    mlx_dir: str | Path | None = None,
    *,
    fmt: ThinkingFormat | None = None,
    n_tokens: int = 16,
    prompts: list[str] | None = None,
) -> VerifyReport:
    """Compare ``hf_dir`` with a GGUF file and/or an MLX folder; see the module doc for the checks."""
    from preflexor_local.convert._common import read_hf_config
    from preflexor_local.prompt import ChatTemplate, render_prompt

    fmt = fmt or ThinkingFormat()
    hf_dir = Path(hf_dir).expanduser()
    read_hf_config(hf_dir)
    if gguf_path is not None:
        gguf_path = Path(gguf_path).expanduser()
        if not gguf_path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
        with open(gguf_path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise InvalidModelError(f"{gguf_path} is not a GGUF file (bad magic)")
    if mlx_dir is not None:
        mlx_dir = Path(mlx_dir).expanduser()
        read_hf_config(mlx_dir)
    report = VerifyReport(str(hf_dir), str(gguf_path) if gguf_path else None, str(mlx_dir) if mlx_dir else None)
    hf = _HF(hf_dir)
    others: list[tuple[str, object, str]] = []
    gg = None
    if gguf_path is not None:
        gg = _GGUF(gguf_path, n_ctx=512)
        others.append(("gguf", gg, gguf_weight_type(gguf_path)))
    if mlx_dir is not None:
        mx_ = _MLX(mlx_dir)
        others.append(("mlx", mx_, mx_.wtype))
    try:
        # tags
        for tag in fmt.tags:
            hid = hf.tok.encode(tag, add_special_tokens=False)
            parts = [f"hf {hid}"]
            ok = len(hid) == 1
            special = ok and hf.tok.added_tokens_decoder.get(hid[0]) is not None and hf.tok.added_tokens_decoder[hid[0]].special
            for label, eng, _ in others:
                if label == "gguf":
                    oid = eng.llm.tokenize(tag.encode(), add_bos=False, special=True)
                    ttype = _gguf_token_types(gguf_path, oid[:1]).get(oid[0]) if len(oid) == 1 else None
                    want = 3 if special else 4
                    ok = ok and oid == hid and ttype == want
                    parts.append(f"gguf {oid} {TOKEN_TYPE_NAMES.get(ttype, ttype)}")
                else:
                    oid = eng.tok._tokenizer.encode(tag, add_special_tokens=False)
                    ok = ok and oid == hid
                    parts.append(f"mlx {oid}")
            report.add(f"tag {tag}", ok, ", ".join(parts))
        # chat template
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is silk tough?"}]
        templates = {"hf": hf.tok.chat_template}
        if gg is not None:
            templates["gguf"] = gg.llm.metadata.get("tokenizer.chat_template")
        for label, eng, _ in others:
            if label == "mlx":
                templates["mlx"] = eng.tok._tokenizer.chat_template
        present = {k: bool(v) for k, v in templates.items()}
        if not any(present.values()):
            report.add("chat template", True, "absent everywhere (a base model)")
        elif not all(present.values()):
            report.add("chat template", False, "missing in " + ", ".join(k for k, v in present.items() if not v))
        else:
            bos, eos = hf.tok.bos_token or "", hf.tok.eos_token or ""
            rendered = {k: render_prompt(ChatTemplate("model", v, bos, eos), messages, prefill=fmt.think_start) for k, v in templates.items()}
            same_text = len({v for v in templates.values()}) == 1
            same_render = len(set(rendered.values())) == 1
            report.add(
                "chat template", same_text and same_render, f"identical text: {same_text}; same rendered prompt: {same_render} ({len(rendered['hf'])} chars)"
            )
        # tokenisation
        strings = TRICKY + [f"{fmt.think_start}\nstep 1{fmt.think_end} answer {fmt.reflect_start}hmm{fmt.reflect_end}"]
        for label, eng, _ in others:
            bad = [s for s in strings if hf.encode(s) != eng.encode(s)]
            report.add(
                f"tokenize {label}", not bad, f"{len(strings) - len(bad)}/{len(strings)} strings identical" + (f"; differs on {bad[0]!r}" if bad else "")
            )
        # greedy / logits
        texts = prompts or ["Spider silk is tough because", f"Question: why? {fmt.think_start}"]
        if templates["hf"]:
            texts.append(
                render_prompt(ChatTemplate("model", templates["hf"], hf.tok.bos_token or "", hf.tok.eos_token or ""), messages[1:], prefill=fmt.think_start)
            )
        prompts_ids = [hf.encode(t) for t in texts]
        for label, eng, wtype in others:
            _compare_logits(report, label, wtype, hf, eng, prompts_ids, n_tokens)
    finally:
        if gg is not None:
            gg.close()
    return report


def _command():
    import json

    import click

    from preflexor_local.commands.options import tags_option

    @click.command("verify")
    @click.argument("hf_dir", type=click.Path(path_type=Path))
    @click.argument("copies", nargs=-1, type=click.Path(path_type=Path))
    @click.option("--tokens", "n_tokens", default=16, show_default=True, help="Greedy tokens to compare per prompt.")
    @tags_option("preset")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
    def verify_cmd(hf_dir, copies, n_tokens, preset, as_json):
        """Check that GGUF / MLX COPIES of HF_DIR agree with it (tags, template, tokens, logits). Exit 1 on failure."""
        from preflexor_local.errors import UsageError

        gguf_path = mlx_dir = None
        for c in copies:
            if c.is_dir():
                if mlx_dir is not None:
                    raise UsageError("more than one MLX folder given")
                mlx_dir = c
            else:
                if gguf_path is not None:
                    raise UsageError("more than one GGUF file given")
                gguf_path = c
        if gguf_path is None and mlx_dir is None:
            raise UsageError("nothing to verify against", hint="pass a .gguf file and/or an MLX folder after the HF folder")
        report = verify(hf_dir, gguf_path, mlx_dir, fmt=ThinkingFormat.preset(preset), n_tokens=n_tokens)
        click.echo(json.dumps(report.to_dict()) if as_json else report.table())
        if not report.ok:
            raise SystemExit(1)

    return verify_cmd


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
