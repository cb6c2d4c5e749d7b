"""Installed, every module ships and nothing generic lands at the top of site-packages."""

import tomllib
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
