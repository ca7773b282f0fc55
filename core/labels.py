"""The label space: label ids (strings, as in the competition JSON), names, optional groups,
and multi-hot encoding in both directions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd


class LabelError(ValueError):
    """A label id that the label space does not know, or a malformed label map."""


@dataclass(frozen=True)
class LabelSpace:
    label_ids: tuple  # str ids, in column order
    names: tuple
    groups: Optional[tuple] = None  # group name per label ("category", "color", ...) or None

    def __post_init__(self):
        if len(set(self.label_ids)) != len(self.label_ids):
            raise LabelError("label map has duplicate labelIds")
        object.__setattr__(self, "_index", {lid: i for i, lid in enumerate(self.label_ids)})

    def __len__(self) -> int:
        return len(self.label_ids)

    @classmethod
    def from_csv(cls, path: str | Path) -> "LabelSpace":
        """Read `labelId,labelName[,taskId,taskName]`; labels are ordered by numeric id. A file
        that is missing, empty or malformed is a LabelError naming the file and the row."""
        frame = _read_label_map(Path(path))
        frame = frame.assign(_order=pd.to_numeric(frame["labelId"], errors="coerce"))
        frame = frame.sort_values(["_order", "labelId"], kind="stable")
        groups = tuple(frame["taskName"]) if "taskName" in frame.columns else None
        return cls(tuple(frame["labelId"]), tuple(frame["labelName"]), groups)

    def index_of(self, label_id: str) -> int:
        try:
            return self._index[str(label_id)]
        except KeyError:
            raise LabelError(f"unknown labelId {label_id!r}") from None

    def has_groups(self) -> bool:
        return self.groups is not None

    def group_names(self) -> list:
        return sorted(set(self.groups)) if self.groups else []

    def group_mask(self, group: str) -> np.ndarray:
        if not self.groups:
            raise LabelError("this label space has no groups")
        return np.array([g == group for g in self.groups])

    def encode(self, label_sets: Iterable[Sequence[str]]) -> np.ndarray:
        """Label-id lists -> uint8 multi-hot matrix (n_images, n_labels)."""
        label_sets = list(label_sets)
        matrix = np.zeros((len(label_sets), len(self)), dtype=np.uint8)
        for row, labels in enumerate(label_sets):
            for label_id in labels:
                matrix[row, self.index_of(label_id)] = 1
        return matrix

    def decode(self, matrix: np.ndarray) -> list:
        """Multi-hot (or boolean) matrix -> label-id lists, in label-space order."""
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != len(self):
            raise LabelError(f"expected a (n, {len(self)}) matrix, got {matrix.shape}")
        ids = np.array(self.label_ids, dtype=object)
        return [list(ids[row.astype(bool)]) for row in matrix]


MAX_LABEL_MAP_BYTES = 16 * 2**20


def _read_label_map(path: Path) -> pd.DataFrame:
    expected = "a header labelId,labelName[,taskId,taskName] and one row per label"
    try:
        size = path.stat().st_size
        if size > MAX_LABEL_MAP_BYTES:  # a label map is a few kB; a wrong file is not read whole
            raise LabelError(f"{path}: {size:,} bytes, far more than a label map has (at most "
                             f"{MAX_LABEL_MAP_BYTES:,}); check data.label_map")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise LabelError(f"{path}: label map not found (config data.label_map)") from None
    except pd.errors.EmptyDataError:
        raise LabelError(f"{path}: the label map is empty; expected {expected}") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise LabelError(f"{path}: cannot read the label map ({err}); expected {expected}") from None
    if not {"labelId", "labelName"} <= set(frame.columns):
        # the columns are the file's first line: not shown, since a wrong file (a key file, a
        # config) would have its first line printed
        raise LabelError(f"{path}: not a label map: its first line is not a header with labelId and labelName "
                         f"columns ({len(frame.columns)} column(s)); expected {expected}")
    if frame.empty:
        raise LabelError(f"{path}: the label map has a header but no labels; expected {expected}")
    frame = frame.apply(lambda column: column.str.strip())
    line = pd.Series(range(2, len(frame) + 2), index=frame.index)  # file line of each row (header is 1)
    for column in ["labelId", "labelName"] + [c for c in ("taskName",) if c in frame.columns]:
        empty = line[frame[column] == ""]
        if len(empty):
            raise LabelError(f"{path}: empty {column} on line(s) {list(empty[:10])}; every label needs one")
    spaced = line[frame["labelId"].str.contains(r"[\s\x00-\x1f\x7f]", regex=True)]
    if len(spaced):
        raise LabelError(f"{path}: labelId with whitespace or a control character on line(s) {list(spaced[:10])}; "
                         "label ids are written space-separated, so such an id would become two labels")
    repeated = frame["labelId"].duplicated(keep=False)
    if repeated.any():
        first = frame.loc[repeated, "labelId"].iloc[0]
        lines = list(line[frame["labelId"] == first])
        raise LabelError(f"{path}: labelId {first!r} appears on lines {lines}; each labelId once")
    return frame
