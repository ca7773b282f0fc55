"""Submission writer: header `image_id,label_id`, one row per test image in the test file's order,
labels space-separated. The file is validated before it replaces anything at `path`."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Optional, Sequence

from fashion_stack.core import atomic
from fashion_stack.core.metrics import MAX_LABELS
from fashion_stack.submissions.validate import HEADER, validate_submission


class SubmissionError(ValueError):
    """A submission that would not pass the validator; the message lists every problem."""


def write_submission(path: str | Path, test_ids_in_order: Sequence, label_sets: Mapping,
                     label_space=None, min_labels: int = 1, max_labels: int = MAX_LABELS) -> Path:
    """Write and validate the submission; raise SubmissionError (and leave `path` untouched)
    listing every problem otherwise.

    `label_sets`: imageId -> list of labelIds. `label_space`: a core.labels.LabelSpace or an
    iterable of label ids to check labels against, or None.
    """
    path = Path(path)
    test_ids = [str(i).strip() for i in test_ids_in_order]
    label_sets = {str(k).strip(): [str(lab) for lab in v] for k, v in label_sets.items()}
    unexpected = sorted(set(label_sets) - set(test_ids))
    if unexpected:
        raise SubmissionError(
            f"{path}: label sets given for {len(unexpected)} imageId(s) not in the test list, e.g. "
            f"{unexpected[:10]}; the predictions and the test file do not match")
    label_ids = _label_ids(label_space)
    with atomic.atomic_path(path) as tmp:
        tmp.write_text(_render(test_ids, label_sets), encoding="utf-8", newline="")
        problems = validate_submission(tmp, test_ids, label_ids, min_labels, max_labels)
        if problems:
            listed = "\n  ".join(p.replace(str(tmp), str(path)) for p in problems)
            raise SubmissionError(f"{path}: not written, {len(problems)} problem(s):\n  {listed}")
    return path


def _render(test_ids: list, label_sets: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for image_id in test_ids:
        writer.writerow([image_id, " ".join(label_sets.get(image_id, []))])
    return buffer.getvalue()


def _label_ids(label_space) -> Optional[list]:
    if label_space is None:
        return None
    if hasattr(label_space, "label_ids"):
        return list(label_space.label_ids)
    return [str(lab) for lab in label_space]
