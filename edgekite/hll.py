"""Apache DataSketches' HLL sketches, loaded without numpy.

The ``datasketches`` package, and its ``_datasketches`` extension when it loads, import numpy
for the array conversions of other sketch families. The edge keeps only HLL sketches, which
never touch numpy, and numpy cost the edge about 11 MB of resident memory (of an 80 MB
budget; measured with ``bench/edge_footprint.py``, 2026-12-06). So the extension is loaded directly with
``import numpy`` made to fail; it then prints one ``ModuleNotFoundError`` line, which is
swallowed, and works. Where numpy is already imported (the hub, tests) or this datasketches
cannot load without it, it is loaded the usual way.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from types import ModuleType
from typing import Any


def _load() -> ModuleType:
    if "numpy" in sys.modules:
        return importlib.import_module("_datasketches")
    sys.modules["numpy"] = None  # type: ignore[assignment]  # makes `import numpy` raise ImportError
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return importlib.import_module("_datasketches")
    except ImportError:
        sys.modules.pop("_datasketches", None)
    finally:
        if sys.modules.get("numpy", 0) is None:
            del sys.modules["numpy"]
    return importlib.import_module("_datasketches")


_ds = _load()

hll_sketch: Any = _ds.hll_sketch
hll_union: Any = _ds.hll_union
tgt_hll_type: Any = _ds.tgt_hll_type

__all__ = ["hll_sketch", "hll_union", "tgt_hll_type"]
