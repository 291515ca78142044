"""The extraction files' columns, declared once: the writer builds its tables against these schemas and
every reader names its columns through them (a name not declared here is an error, not a silent
empty read).

Types: ``int16/int32/int64/float32/string``, ``list<T>`` (a list per row) and ``window<T>`` (a list of
the extraction's window width per row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOGIT_COLUMNS = (  # present when the SAE's decoder lives in the residual stream (the logit lens)
    "top_logit_ids",
    "top_logit_values",
    "top_logit_tokens",
    "bottom_logit_ids",
    "bottom_logit_values",
    "bottom_logit_tokens",
    "logit_hist",
    "logit_min",
    "logit_max",
)


@dataclass(frozen=True)
class FileSchema:
    """One extraction file's columns: name -> (type, meaning)."""

    file: str
    columns: dict[str, tuple[str, str]]

    def cols(self, *names: str) -> list[str]:
        """``names`` as columns to read, each checked to be declared."""
        unknown = [n for n in names if n not in self.columns]
        if unknown:
            raise KeyError(f"{self.file} declares no column {', '.join(unknown)}")
        return list(names)

    def arrow(self, *, width: int | None = None, without: tuple[str, ...] = ()) -> Any:
        """The pyarrow schema (``width``: the window width of ``window<T>`` columns)."""
        import pyarrow as pa

        return pa.schema(
            [(n, _arrow_type(t, width)) for n, (t, _) in self.columns.items() if n not in without]
        )

    def table(self, cols: dict[str, Any], *, width: int | None = None) -> Any:
        """``cols`` as a table of this schema: every declared column present (the logit lens's may be
        left out together), no other, each of its declared type."""
        without = () if LOGIT_COLUMNS[0] in cols or self.file != "features.parquet" else LOGIT_COLUMNS
        schema = self.arrow(width=width, without=without)
        if list(cols) != schema.names:
            raise ValueError(f"{self.file}: columns {list(cols)} are not the declared {schema.names}")
        import pyarrow as pa

        return pa.table(cols, schema=schema)


def _arrow_type(spec: str, width: int | None) -> Any:
    import pyarrow as pa

    scalar = {
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "string": pa.string(),
    }
    if spec.startswith("list<"):
        return pa.list_(scalar[spec[5:-1]])
    if spec.startswith("window<"):
        if width is None:
            raise ValueError("a window column needs the window width")
        return pa.list_(scalar[spec[7:-1]], width)
    return scalar[spec]


FEATURES = FileSchema(
    "features.parquet",
    {
        "index": ("int32", "the feature's index"),
        "frequency": ("float32", "share of the extraction's tokens it fired on"),
        "count": ("int64", "tokens it fired on"),
        "mean": ("float32", "mean activation where it fired"),
        "max": ("float32", "largest activation"),
        "q50": ("float32", "median activation where it fired"),
        "q90": ("float32", "90th percentile"),
        "q99": ("float32", "99th percentile"),
        "hist": ("list<int32>", "counts of its activations in HIST_BINS equal bins over [0, max]"),
        "neighbours": ("list<int32>", "nearest features by decoder cosine"),
        "neighbour_cos": ("list<float32>", "their cosines"),
        "quantile_edges": ("list<float32>", "edges of intervals holding equal shares of its firings"),
        "quantile_shares": ("list<float32>", "the share of firings each interval holds"),
        "top_logit_ids": ("list<int32>", "tokens its decoder row promotes most (logit lens)"),
        "top_logit_values": ("list<float32>", "their logit contributions"),
        "top_logit_tokens": ("list<string>", "their text"),
        "bottom_logit_ids": ("list<int32>", "tokens it suppresses most"),
        "bottom_logit_values": ("list<float32>", "their logit contributions"),
        "bottom_logit_tokens": ("list<string>", "their text"),
        "logit_hist": ("list<int32>", "counts of all its logit contributions in LOGIT_HIST_BINS bins"),
        "logit_min": ("float32", "the histogram's low end"),
        "logit_max": ("float32", "its high end"),
    },
)

EXAMPLES = FileSchema(
    "examples.parquet",
    {
        "feature": ("int32", "the feature"),
        "kind": ("string", "'top' (by peak activation) or 'quantile' (sampled per interval)"),
        "group": ("int16", "the quantile interval (0 for top examples)"),
        "rank": ("int16", "rank within its kind and group"),
        "value": ("float32", "the peak activation"),
        "sequence": ("int32", "the token sequence it comes from"),
        "start": ("int16", "the window's first position in that sequence"),
        "peak": ("int16", "the peak's position in the window"),
        "tokens": ("window<int32>", "the window's token ids"),
        "values": ("window<float32>", "the feature's activation at each of them"),
    },
)
