"""The extraction files' declared columns (features/schema.py) are the files' columns: the writer
builds its tables against them, and every column a reader in the package names is declared."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest

import mistudio_widgets
from mistudio_widgets.features.schema import EXAMPLES, FEATURES, LOGIT_COLUMNS

PKG = Path(mistudio_widgets.__file__).parent


def test_every_column_a_reader_names_is_declared():
    """Each ``X.cols(...)`` call in the package names declared columns, and no read names its columns
    as a bare list of strings (which the schema would not check)."""
    checked = 0
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            if isinstance(fn, ast.Attribute) and fn.attr == "cols" and isinstance(fn.value, ast.Name):
                schema = {"FEATURES": FEATURES, "EXAMPLES": EXAMPLES}[fn.value.id]
                schema.cols(*[a.value for a in node.args if isinstance(a, ast.Constant)])
                checked += 1
            for kw in node.keywords:
                assert not (kw.arg == "columns" and isinstance(kw.value, ast.List)), (
                    f"{f.name}:{node.lineno} reads columns by a bare list; name them through the schema"
                )
    assert checked >= 5


def test_the_writer_refuses_a_table_that_is_not_the_declared_one():
    cols = {n: pa.array([], type=t) for n, t in zip(FEATURES.arrow().names, FEATURES.arrow().types)}
    assert FEATURES.table(cols).schema == FEATURES.arrow()
    without = {n: v for n, v in cols.items() if n not in LOGIT_COLUMNS}  # a transcoder: no logit lens
    assert FEATURES.table(without).num_columns == len(cols) - len(LOGIT_COLUMNS)
    with pytest.raises(ValueError, match="not the declared"):
        FEATURES.table({**cols, "extra": pa.array([], type=pa.int32())})
    with pytest.raises(ValueError, match="not the declared"):
        FEATURES.table({n: v for n, v in cols.items() if n != "max"})
    with pytest.raises(KeyError, match="no column maximum"):
        FEATURES.cols("index", "maximum")
    assert EXAMPLES.arrow(width=7).field("tokens").type == pa.list_(pa.int32(), 7)
