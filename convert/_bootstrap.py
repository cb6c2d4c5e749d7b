"""Makes ``python convert/<script>.py`` work from a checkout, installed or not.

Imported only when a converter runs as a script: it puts the checkout root on
``sys.path``, maps ``preflexor_local.convert`` onto this folder when the package
is not installed, and takes this folder off ``sys.path`` again so that file
names like ``tokens.py`` cannot shadow other top-level modules.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
_root = _here.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
if str(_root) not in sys.path:
    sys.path.insert(0, str(_root))
try:
    import preflexor_local.convert  # noqa: F401
except ModuleNotFoundError:
    import preflexor_local

    spec = importlib.util.spec_from_file_location("preflexor_local.convert", _here / "__init__.py", submodule_search_locations=[str(_here)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["preflexor_local.convert"] = mod
    spec.loader.exec_module(mod)
    preflexor_local.convert = mod
