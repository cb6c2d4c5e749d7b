"""Typed training settings shared by the CLI (``train orpo|dpo|sft|preflexor``, ``data generate``), the Python API
and every train engine.

Fields carry their flag, help and allowed range (``preflexor_local.config.opt``),
so ``cli_options(TrainConfig)`` / ``cli_options(GenerationConfig)`` generate the
Click options and a bad value is refused with the same words from the CLI and
from Python. In ``TrainConfig``, ``None`` means "the method's default" and is
resolved by ``TrainConfig.resolved()``; an engine only ever sees resolved values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Settings, opt
from ..errors import UsageError
from ..format import ThinkingFormat

METHODS = ("orpo", "dpo", "sft")
DPO_LOSSES = ("exo_pair", "sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down")
ADAPTERS = ("lora", "dora", "none")
TAG_PRESETS = tuple(ThinkingFormat.PRESETS)
DEFAULT_CATEGORIES = ("Reasoning Steps", "Relevant Materials or Concepts", "Design Principles", "Material Properties", "Hypothesis")


@dataclass
class TrainConfig(Settings):
    model: str | None = opt(None, "Model to train: a Hugging Face checkpoint directory (for DPO: the merged Phase I model).", "--model", "-m")
    output: str | None = opt(None, "Output directory: round checkpoints, metrics.jsonl, the final adapter/model.", "--output", "-o")
    method: str = "orpo"  # set by the subcommand
    data: str | None = opt(None, "Fixed preference data (JSONL of prompt/chosen/rejected). Without it, pairs are generated each round from --store.", "--data")
    engine: str = opt("trl", "Train engine: trl (PyTorch: CUDA, MPS, CPU) or mlx (Apple silicon).", "--engine", choices=("trl", "mlx"))
    # objective
    loss: str | None = opt(None, f"DPO-family loss ({', '.join(DPO_LOSSES)}); default exo_pair.", "--loss")
    beta: float | None = opt(None, "Beta of the ORPO/DPO objective (default 0.1).", "--beta", ge=0)
    label_smoothing: float | None = opt(None, "Label smoothing of the DPO loss (default 1e-3 for exo_pair, else 0).", "--label-smoothing", ge=0, le=0.5)
    # optimisation
    lr: float | None = opt(None, "Learning rate (default: ORPO/SFT 5e-5 with an adapter, 5e-6 full; DPO 5e-7 with an adapter, 1e-7 full).", "--lr", gt=0, le=1)
    steps: int | None = opt(None, "Optimizer steps in all (default: rounds x steps-per-round).", "--steps", ge=1)
    rounds: int = opt(1, "Active-learning rounds: train, then regenerate pairs with the current model.", "--rounds", ge=1)
    steps_per_round: int = opt(50, "Optimizer steps per round.", "--steps-per-round", ge=1)
    batch_size: int = opt(1, "Pairs per device per step.", "--batch-size", ge=1)
    grad_accum: int = opt(2, "Gradient accumulation steps.", "--grad-accum", ge=1)
    max_length: int = opt(
        2048, "Most tokens of prompt + reply. A pair whose chosen reply does not fit is dropped and counted, never cut.", "--max-length", ge=16
    )
    end_weight: float = opt(
        1.0,
        "Weight of the end-of-turn label in the chosen reply's NLL (ORPO, SFT): above 1 teaches a model that never ends a turn to stop.",
        "--end-weight",
        ge=1,
        le=1000,
    )
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.", "--max-grad-norm", gt=0)
    warmup_steps: int = opt(0, "Linear warm-up steps.", "--warmup-steps", ge=0)
    # adapter
    adapter: str = opt("lora", "lora, dora, or none (full fine-tune).", "--lora-type", choices=ADAPTERS, deprecated=("--adapter",))
    rank: int = opt(16, "LoRA/DoRA rank.", "--rank", ge=1)
    alpha: int | None = opt(None, "LoRA/DoRA alpha (default: rank).", "--alpha", gt=0)
    dropout: float = opt(0.05, "LoRA dropout.", "--lora-dropout", ge=0, le=0.99)
    target_modules: str = opt(
        "all-linear",
        "Modules the adapter wraps: all-linear, a comma list of name suffixes, or re:REGEX over full module names (e.g. only the top blocks).",
        "--target-modules",
    )
    train_embeddings: bool | None = opt(
        None, "Train the embedding and output rows (needed when the tags are new tokens; default on for ORPO/SFT).", "--train-embeddings/--freeze-embeddings"
    )
    # masking
    mask_thinking: bool | None = opt(
        None, "Ignore the loss before the last closing thinking tag, chosen and rejected (default on for DPO).", "--mask-thinking/--no-mask-thinking"
    )
    partial_mask_p: float = opt(1.0, "Fraction of thinking tokens ignored when masking (re-drawn every epoch); 1.0 = all.", "--partial-mask", gt=0, le=1)
    keep_close_tag: bool = opt(True, "Keep the closing thinking tag itself in the loss when masking.", "--keep-close-tag/--mask-close-tag")
    on_missing_close: str = opt(
        "score",
        "A reply without the closing tag: score (whole reply counts) or ignore (reply left out of the loss). Counted either way.",
        "--on-missing-close",
        choices=("score", "ignore"),
    )
    tags: str = opt("preflexor", "Thinking tag preset (preflexor, think).", "--tags", choices=TAG_PRESETS)
    tag_tokens: str = opt(
        "add",
        "add: make the tags single special tokens (new embedding rows); plain: keep them as text (what a LoRA adapter for an existing vocabulary needs).",
        "--tag-tokens",
        choices=("add", "plain"),
    )
    chat_template: str | None = opt(
        None, "Chat template for training AND the saved model: auto, a known name (gemma, llama3, chatml, plain) or a .jinja file.", "--chat-template"
    )
    # runtime
    seed: int = opt(0, "Random seed (data order, masks, sampling).", "--seed", ge=0)
    device: str = opt("auto", "auto (CUDA, then MPS, then CPU), cuda, mps or cpu.", "--device")
    dtype: str = opt("auto", "auto (bf16 on CUDA, else fp32), float32, bfloat16, float16.", "--dtype")
    gradient_checkpointing: bool = opt(False, "Trade compute for memory.", "--gradient-checkpointing/--no-gradient-checkpointing")
    resume: bool = opt(False, "Continue the run in --output from its last complete round.", "--resume/--no-resume")
    log_every: int = opt(1, "Log metrics every N steps.", "--log-every", ge=1)

    @property
    def is_dpo(self) -> bool:
        return self.method == "dpo"

    def resolved(self) -> TrainConfig:
        """A copy with every method default filled in, validated."""
        c = dataclasses.replace(self)
        if c.method not in METHODS:
            raise UsageError(f"unknown training method {c.method!r}", hint=f"use one of: {', '.join(METHODS)}")
        if c.adapter not in ADAPTERS:
            raise UsageError(f"unknown adapter {c.adapter!r}", hint=f"use one of: {', '.join(ADAPTERS)}")
        if c.is_dpo:
            c.loss = c.loss or "exo_pair"
            if c.loss not in DPO_LOSSES:
                raise UsageError(f"unknown DPO loss {c.loss!r}", hint=f"use one of: {', '.join(DPO_LOSSES)}")
            if c.label_smoothing is None:
                c.label_smoothing = 1e-3 if c.loss == "exo_pair" else 0.0
            if c.loss == "exo_pair" and not 0 < c.label_smoothing < 0.5:
                raise UsageError(f"exo_pair needs label smoothing in (0, 0.5), got {c.label_smoothing}", hint="the default 1e-3 is the usual value")
            if c.mask_thinking is None:
                c.mask_thinking = True
            if c.train_embeddings is None:
                c.train_embeddings = False
            if c.end_weight != 1.0:
                raise UsageError(f"--end-weight applies to ORPO and SFT (their NLL term), not {c.method}", hint="drop --end-weight for DPO")
        else:
            if c.loss not in (None, c.method):
                raise UsageError(f"--loss {c.loss} applies to DPO only", hint="use `train dpo --loss ...`")
            c.loss = c.method
            c.label_smoothing = c.label_smoothing or 0.0
            c.mask_thinking = bool(c.mask_thinking)
            if c.train_embeddings is None:
                c.train_embeddings = c.adapter != "none" and c.tag_tokens == "add"
        c.beta = 0.1 if c.beta is None else c.beta
        if c.lr is None:
            full = c.adapter == "none"
            c.lr = (5e-7 if not full else 1e-7) if c.is_dpo else (5e-6 if full else 5e-5)
        c.alpha = c.alpha or c.rank
        for name in ("rounds", "steps_per_round", "batch_size", "grad_accum", "rank", "log_every"):
            if getattr(c, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
        if c.steps is not None and c.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {c.steps}")
        if c.max_length < 16:
            raise UsageError(f"--max-length {c.max_length} is too small")
        if not 0.0 < c.partial_mask_p <= 1.0:
            raise UsageError(f"--partial-mask must be in (0, 1], got {c.partial_mask_p}")
        if c.on_missing_close not in ("score", "ignore"):
            raise UsageError(f"--on-missing-close must be score or ignore, got {c.on_missing_close!r}")
        if not c.model:
            raise UsageError("no model to train", hint="pass --model DIR (a Hugging Face checkpoint directory)")
        if not c.output:
            raise UsageError("no output directory", hint="pass -o DIR")
        return c

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.rounds * self.steps_per_round

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class GenerationConfig(Settings):
    """How preference pairs are made (``data generate``; every round of ``train … --store … --teacher …``).

    The ``train`` commands take the phase from the method, and the seed and the
    thinking tags from the run (``run.GeneratedPairs.for_run``), so the pairs
    always carry the tags the trainer masks on.
    """

    store: str | None = opt(None, "RAG store (.db) to draw context from; a .txt/.md file or folder also works.", "--store")
    teacher: str | None = opt(None, "Teacher model spec: GGUF file, HF directory, or http(s)://…/v1 server.", "--teacher")
    judge_model: str | None = opt(None, "Judge model spec (default: the teacher when --judge-pairs is on).", "--judge")
    judge: bool = opt(False, "Keep a pair only when the judge scores the student's answer below the teacher's.", "--judge-pairs/--no-judge-pairs")
    samples: int = opt(1, "Student candidates per question (the judge picks the hardest worse one).", "--samples", ge=1)
    style: str = opt(
        "sections", "Thinking layout: headed sections, or a knowledge graph (IS-A / RELATES-TO / INFLUENCES) first.", "--style", choices=("sections", "graph")
    )
    categories: tuple[str, ...] | str | None = opt(None, "Comma-separated thinking headings (default: the PRefLexOR set).", "--categories")
    k_random: int = opt(3, "Random chunks that seed each question.", "--k-random", ge=1)
    k_search: int = opt(3, "Chunks retrieved for each question.", "--k-search", ge=0)
    teacher_max_tokens: int = opt(512, "Most tokens per teacher call.", "--teacher-max-tokens", ge=1)
    student_max_tokens: int = opt(512, "Most tokens per student reply.", "--student-max-tokens", ge=1)
    max_context_chars: int = opt(6000, "Most characters of retrieved context per prompt.", "--max-context-chars", ge=1)
    retries: int = opt(3, "Tries per teacher call before failing.", "--retries", ge=1)
    concurrency: int = opt(
        1,
        "Pairs made at once, keeping that many teacher requests in flight (an OpenAI-compatible teacher server; in-process models take turns).",
        "--concurrency",
        "-j",
        ge=1,
    )
    teacher_ctx: int | None = opt(None, "Context window for a local teacher/student.", "--teacher-ctx", ge=64)
    n: int = opt(50, "Pairs the output file should hold (rows already there count; with train: pairs generated each round).", "--pairs-per-round", "-n", ge=1)
    phase: int = opt(1, "1: rejected = the student's plain answer; 2: its full thinking + answer.", "--phase", ge=1, le=2)
    tags: str = opt("preflexor", "Thinking tags the pairs are written with (preflexor, think).", "--tags", choices=TAG_PRESETS)
    seed: int = opt(0, "Random seed (chunks, sampling).", "--seed", ge=0)
    # The recipe's temperatures: settings of the Python API, not flags.
    question_temperature: float = 0.7
    teacher_temperature: float = 0.2
    student_temperature: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.categories, str):  # the CLI's comma list
            self.categories = tuple(c.strip() for c in self.categories.split(",") if c.strip())
        self.categories = tuple(self.categories or DEFAULT_CATEGORIES)
        super().__post_init__()

    def load_options(self):
        """How local teacher, judge and student models are loaded."""
        from ..config import LoadOptions

        return LoadOptions(ctx=self.teacher_ctx)


@dataclass
class PreflexorPhases(Settings):
    """``train preflexor``: Phase I (ORPO) rounds, merge, then Phase II (DPO-family) rounds on the merged Phase I model."""

    phase1_rounds: int = opt(2, "Phase I (ORPO) active-learning rounds.", "--phase1-rounds", ge=1)
    phase2_rounds: int = opt(1, "Phase II (DPO-family) active-learning rounds.", "--phase2-rounds", ge=1)
    phase2_loss: str = opt("exo_pair", "Phase II loss.", "--loss", choices=DPO_LOSSES)
