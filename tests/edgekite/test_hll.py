"""``edgekite.hll``: DataSketches' HLL without numpy in the process, same sketches as the package's."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stderr == "", out.stderr  # the loader's swallowed ImportError line does not leak
    return out.stdout.strip()


def test_the_edge_store_loads_hll_sketches_without_numpy() -> None:
    out = _run(
        "import sys\n"
        "import edgekite.store.rollup_writer\n"
        "from edgekite.hll import hll_sketch, hll_union, tgt_hll_type\n"
        "s = hll_sketch(12, tgt_hll_type.HLL_4)\n"
        "for i in range(20000): s.update(f'visitor-{i}')\n"
        "u = hll_union(12); u.update(hll_sketch.deserialize(s.serialize_compact()))\n"
        "print('numpy' in sys.modules, abs(u.get_estimate() - 20000) / 20000 < 0.05)\n"
        "import numpy\n"  # and numpy still imports for whoever wants it later
        "print(numpy.__name__)\n"
    )
    assert out.splitlines() == ["False True", "numpy"]


def test_sketches_are_the_packages_own_bytes_for_bytes() -> None:
    """A sketch written by the numpy-free loader reads back with the regular package (and the
    reverse), so sketches stored by an older edge keep their meaning."""
    out = _run(
        "from edgekite.hll import hll_sketch, tgt_hll_type\n"
        "import datasketches as ds\n"
        "a = hll_sketch(12, tgt_hll_type.HLL_4); b = ds.hll_sketch(12, ds.tgt_hll_type.HLL_4)\n"
        "for i in range(5000): a.update(str(i)); b.update(str(i))\n"
        "back = ds.hll_sketch.deserialize(a.serialize_compact())\n"
        "same_estimate = round(back.get_estimate()) == round(a.get_estimate())\n"
        "print(a.serialize_compact() == b.serialize_compact(), same_estimate)\n"
    )
    assert out == "True True"
