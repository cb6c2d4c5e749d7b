"""Installed, every module ships and nothing generic lands at the top of site-packages."""

import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_and_mapped_inside_preflexor_local():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool["package-dir"]
    assert all(name == "preflexor_local" or name.startswith("preflexor_local.") for name in listed)
    assert dirs["preflexor_local.convert"] == "convert" and dirs["preflexor_local.app"] == "."
    found = {"preflexor_local.app"}
    for base, pkg in (("preflexor_local", "preflexor_local"), ("convert", "preflexor_local.convert")):
        for init in (ROOT / base).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / base)
            found.add(".".join([pkg, *rel.parts]))
    assert found == listed


def test_root_holds_no_other_module_than_cli():
    # the root is installed as preflexor_local.app: any other .py here would ship too
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["__init__.py", "cli.py"]


def test_every_question_set_and_corpus_matches_a_package_data_glob():
    # include-package-data is off: a file under sets/ ships only if a package-data glob names it
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["include-package-data"] is False
    globs = tool["package-data"]["preflexor_local.eval"]
    sets = ROOT / "preflexor_local" / "eval" / "sets"
    files = {p.relative_to(sets.parent).as_posix() for p in sets.iterdir() if p.is_file()}
    assert {"sets/grounded.jsonl", "sets/grounded-corpus.jsonl", "sets/grounded.md"} <= files
    assert all(any(fnmatch(f, g) for g in globs) for f in files), sorted(files)


def shipped_data(monkeypatch) -> dict:
    """setuptools' own list of the data files build_py copies into the wheel, by package (nothing is built or written)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    dist = Distribution()
    apply_configuration(dist, ROOT / "pyproject.toml")
    build = dist.get_command_obj("build_py")
    build.ensure_finalized()
    return {pkg: names for pkg, _src, _dst, names in build.data_files}


def test_the_playground_files_ship_as_package_data(monkeypatch):
    shipped = shipped_data(monkeypatch)
    static = sorted(f"static/{p.name}" for p in (ROOT / "preflexor_local/serve/static").iterdir())
    assert static and sorted(shipped["preflexor_local.serve"]) == static


def test_both_demo_adapters_ship_as_package_data(monkeypatch):
    shipped = shipped_data(monkeypatch)
    assert {"data/demo-adapter.gguf", "data/demo-adapter-grounded.gguf"} <= set(shipped["preflexor_local"])
