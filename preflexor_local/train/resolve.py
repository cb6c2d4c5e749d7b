"""Which model directory a training ``--model`` names; the same rule for every engine.

* A directory with ``config.json`` is the model (a Hugging Face checkpoint; for
  ``--engine mlx`` also an MLX model directory).
* A training run folder (``-o`` of an earlier ``train`` run: no ``config.json``
  of its own) means its ``merged/`` model. This is how Phase II is given
  Phase I (``train dpo --model ./phase1``, and ``train preflexor`` between its
  phases); a run folder without ``merged/`` (``--no-merge``) is an error that
  says so.
* A GGUF file is refused with the command that turns it into a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidModelError, ModelNotFoundError

MERGED = "merged"
RUN_FILE = "run.json"


def model_dir(spec: str | Path) -> Path:
    """The model directory to train for ``spec`` (see the module docstring)."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        raise InvalidModelError(
            f"{path} is a GGUF file; training needs a Hugging Face checkpoint",
            hint=f"convert it first: preflexor-local convert hf {path} -o DIR (dense weights), then train DIR",
        )
    if not path.exists():
        raise ModelNotFoundError(f"model {spec} does not exist", hint="pass --model DIR: a checkpoint directory, or a training run folder")
    if path.is_dir() and not (path / "config.json").is_file():
        if (path / MERGED / "config.json").is_file():
            return path / MERGED
        if (path / RUN_FILE).is_file():
            raise InvalidModelError(
                f"{path} is a training run without a merged model ({MERGED}/ is missing)",
                hint="finish it with the same train command plus --resume, without --no-merge",
            )
    if not (path / "config.json").is_file():
        raise InvalidModelError(
            f"{path} has no config.json: not a model directory",
            hint="pass the directory that holds config.json and the weights (Hugging Face, or MLX for --engine mlx)",
        )
    return path


def model_name(path: Path) -> str:
    """The name that says what a model is (a run's ``merged/`` is named after its run folder)."""
    return path.parent.name if path.name == MERGED else path.name
