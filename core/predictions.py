"""Prediction tables: float32, indexed by imageId (str), one column per labelId (str).

Every stage that hands probabilities to the next writes and reads them through here, so the
format is checked in one place and joins are always by imageId, never by row position.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fashion_stack.core import atomic


class PredictionError(ValueError):
    """A prediction table that breaks the format (ids, columns, dtype, finiteness)."""


def make_table(image_ids: Sequence, probs: np.ndarray, label_ids: Sequence[str]) -> pd.DataFrame:
    probs = np.asarray(probs, dtype=np.float32)
    index = pd.Index([str(i) for i in image_ids], name="imageId")
    table = pd.DataFrame(probs, index=index, columns=[str(c) for c in label_ids])
    check_table(table, where="new prediction table")
    return table


def check_table(table: pd.DataFrame, where: str, label_ids: Sequence[str] | None = None) -> None:
    if table.index.name != "imageId":
        raise PredictionError(f"{where}: index must be named imageId, is {table.index.name!r}")
    dupes = table.index[table.index.duplicated()].unique()
    if len(dupes):
        raise PredictionError(f"{where}: duplicated imageIds {list(dupes[:10])}")
    if label_ids is not None and list(table.columns) != [str(c) for c in label_ids]:
        missing = sorted(set(map(str, label_ids)) - set(table.columns))
        extra = sorted(set(table.columns) - set(map(str, label_ids)))
        raise PredictionError(
            f"{where}: label columns differ from the label space (missing {missing[:10]}, "
            f"extra {extra[:10]}, or a different order)")
    values = table.to_numpy()
    if values.dtype != np.float32:
        raise PredictionError(f"{where}: dtype must be float32, is {values.dtype}")
    bad = ~np.isfinite(values)
    if bad.any():
        rows = table.index[bad.any(axis=1)]
        raise PredictionError(f"{where}: non-finite probabilities for imageIds {list(rows[:10])}")


def write(path: str | Path, table: pd.DataFrame) -> None:
    check_table(table, where=str(path))
    atomic.write_parquet(path, table)


def read(path: str | Path, label_ids: Sequence[str] | None = None) -> pd.DataFrame:
    table = pd.read_parquet(path)
    if table.index.name != "imageId":  # a positional index would otherwise pass as ids "0", "1", ...
        raise PredictionError(f"{path}: index must be named imageId, is {table.index.name!r}; "
                              "write prediction tables with core.predictions.write")
    table.index = table.index.astype(str)
    table.index.name = "imageId"
    check_table(table, where=str(path), label_ids=label_ids)
    return table
