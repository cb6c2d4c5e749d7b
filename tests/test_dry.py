"""DRY sampling: the rule on hand-made histories, and the same greedy tokens from llama.cpp's own DRY sampler and ours
(transformers, MLX) on one tiny model, where DRY changes what greedy decoding writes."""

from __future__ import annotations

import dataclasses
import math

import pytest

from preflexor_local.backends import GenerationRequest
from preflexor_local.backends.dry import DryPenalty, dry_for
from preflexor_local.config import LoadOptions, Sampling
from preflexor_local.errors import UsageError

WORDS = {1: "a", 2: "b", 3: "c", 4: "y", 9: "\n", 8: ": "}


def penalty(multiplier=1.0, base=2.0, allowed=2, window=100) -> DryPenalty:
    return DryPenalty(multiplier, base, allowed, WORDS.__getitem__, window)


def test_the_worked_example():
    # a b c c b c y a b c: the tail "a b c" appeared before "c" (3 long) and "b c" before "y" (2 long);
    # "c" alone before "b" is below the allowed length
    a, b, c, y = 1, 2, 3, 4
    got = penalty(multiplier=0.8, base=1.75)([a, b, c, c, b, c, y, a, b, c])
    assert got == pytest.approx({c: 0.8 * 1.75**1, y: 0.8 * 1.75**0})


def test_the_penalty_grows_with_the_repeat():
    loop = [1, 2, 3, 4] * 3  # a b c y a b c y a b c y: the first 8 tokens end as the output ends, and "a" followed them
    got = penalty()(loop)
    assert set(got) == {1}
    assert got[1] == 2.0 ** (8 - 2)
    assert penalty()(loop[:6])[3] == 2.0 ** (2 - 2)  # a b c y a b -> "c" would repeat "a b c"


def test_a_breaker_bounds_the_repeat_and_is_never_penalised():
    # "a b c \n a b c": "a b c" was followed by a line break, a breaker: free
    assert penalty()([1, 2, 3, 9, 1, 2, 3]) == {}
    # "\n a b c y \n a b c": the earlier match runs back through the line break (4 tokens) but the repeat
    # cannot reach past the output's last breaker: it counts 3
    assert penalty()([9, 1, 2, 3, 4, 9, 1, 2, 3]) == {4: 2.0 ** (3 - 2)}
    # "a b c y a b : a b": "a b" was followed by ": " (free) and by "c" (a 2-token repeat, the base rate)
    assert penalty()([1, 2, 3, 4, 1, 2, 8, 1, 2]) == {3: 1.0}
    assert penalty(allowed=3)([1, 2, 9, 1, 2]) == {}  # the tail after the breaker is shorter than allowed


def test_window_and_off():
    loop = [1, 2, 3, 4] * 3
    assert penalty(window=9)(loop) == {1: 2.0 ** (5 - 2)}  # only the last 9 tokens are searched
    assert dry_for(Sampling(dry_multiplier=0), WORDS.__getitem__, 10) is None
    huge = DryPenalty(1.0, 1.75, 2, WORDS.__getitem__, 10_000)([1, 2] * 400)
    # a 798-token repeat: the exponent is clamped where a float32 logit would overflow, as llama.cpp clamps it
    assert huge == {1: pytest.approx(1.75 ** int(88.7228391 / math.log(1.75)))}
    assert huge[1] < 3.4e38


def test_settings_are_checked():
    with pytest.raises(UsageError, match="--dry-multiplier must be at least 0"):
        Sampling(dry_multiplier=-1)
    with pytest.raises(UsageError, match="--dry-base must be at least 1"):
        Sampling(dry_base=0.5)


# -- the three engines on one model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tiny_llama, tiny_llama_gguf, request):
    """The tiny Llama on llama.cpp (f32 GGUF), transformers and, where installed, MLX (fp32): the same weights."""
    from preflexor_local.backends.llamacpp import LlamaCppBackend
    from preflexor_local.backends.transformers import TransformersBackend

    opts = LoadOptions(threads=1, device="cpu", dtype="float32")
    out = {"llama.cpp": LlamaCppBackend(tiny_llama_gguf, opts), "transformers": TransformersBackend(tiny_llama, opts)}
    try:
        import mlx_lm  # noqa: F401
    except ImportError:
        pass
    else:
        from preflexor_local.backends.mlx import MLXBackend

        out["mlx"] = MLXBackend(request.getfixturevalue("tiny_mlx"), opts)
    yield out
    for b in out.values():
        b.close()


def greedy(backend, ids: list[int], dry: float, n: int = 40, source: list[int] = ()) -> list[int]:
    sampling = Sampling(temperature=0, repeat_penalty=1.0, dry_multiplier=dry, max_tokens=n, stop_repeats=False)
    out = []
    for t in backend.token_stream(ids, sampling, n, dry_source=source):  # on past an end of turn: a random model ends early
        out.append(t)
        if len(out) >= n:
            break
    return out


def longest_repeat(tokens: list[int]) -> int:
    """The longest stretch of ``tokens`` that occurs twice."""
    return max(
        (
            n
            for n in range(1, len(tokens))
            for i in range(len(tokens) - n)
            if tokens[i : i + n] in (tokens[j : j + n] for j in range(i + 1, len(tokens) - n + 1))
        ),
        default=0,
    )


def test_our_dry_is_llama_cpp_s(engines):
    """Greedy with DRY on: the transformers and MLX backends (our rule) write llama.cpp's tokens (its sampler),
    and DRY changed them: without it the model loops on what it has written."""
    ref = engines["llama.cpp"]
    ids = ref.encode(ref.render(GenerationRequest(messages=[{"role": "user", "content": "silk silk silk bone bone bone"}])))
    plain = greedy(ref, ids, 0.0)
    with_dry = greedy(ref, ids, 0.8)
    assert with_dry != plain
    assert longest_repeat(plain) > longest_repeat(with_dry) >= 1
    for name, backend in engines.items():
        assert greedy(backend, ids, 0.8) == with_dry, name
        assert greedy(backend, ids, 0.0) == plain, name
    assert len(ref._dry_protos) == 1  # llama.cpp's DRY sampler is built once (a vocabulary scan) and cloned per call


def test_a_dry_source_counts_as_written_before_the_reply(engines):
    """A reply may not copy its source: with the plain greedy reply as the source, DRY steers off it from the first
    repeated stretch, and the three engines agree; the text form of a request goes through ``source_ids``."""
    ref = engines["llama.cpp"]
    request = GenerationRequest(messages=[{"role": "user", "content": "silk bone crack"}], sampling=Sampling(temperature=0, max_tokens=24))
    ids = ref.encode(ref.render(request))
    copy = greedy(ref, ids, 0.8, n=24)
    steered = greedy(ref, ids, 0.8, n=24, source=copy)
    assert steered != copy and steered[:2] == copy[:2]  # two tokens repeat freely (allowed length), then it pays
    for name, backend in engines.items():
        assert backend.encode("silk bone") == backend.encode("") + backend.source_ids("silk bone"), name
        assert greedy(backend, ids, 0.8, n=24, source=copy) == steered, name
    # a request's text source reaches the sampler as its tokens, only while DRY is on
    seen, stream = [], ref.token_stream
    ref.token_stream = lambda *a, dry_source=(): seen.append(list(dry_source)) or stream(*a, dry_source=dry_source)
    try:
        for dry in (0.8, 0.0):
            ref.generate(dataclasses.replace(request, dry_source="bone silk", sampling=dataclasses.replace(request.sampling, dry_multiplier=dry)))
    finally:
        del ref.token_stream
    assert seen == [ref.source_ids("bone silk"), []] and seen[0]


def test_a_degenerate_loop_costs_little():
    """Every sampled token pays for DRY: on a 512-token loop of one token it stays linear (well under a forward pass)."""
    import time

    d = DryPenalty(0.8, 1.75, 2, lambda t: "x", 512)
    start = time.perf_counter()
    for _ in range(10):
        d([7] * 512)
    assert (time.perf_counter() - start) / 10 < 0.01
