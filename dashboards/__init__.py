"""The hub's analyst views (``sql/``, created by the hub at start) and its dashboard (``static/``).

A package only so the SQL and the static files ship inside the wheel; there is no Python here.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
SQL_DIR = HERE / "sql"
STATIC_DIR = HERE / "static"
