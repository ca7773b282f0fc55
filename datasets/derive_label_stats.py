"""Derive the label statistics that the demo generator samples from, and embed them.

    python -m fashion_stack.datasets.derive_label_stats [--source-dir ../shared/data/imat2018] [--out FILE]

Reads the real iMaterialist 2018 validation labels (9,897 images) and writes
datasets/resources/label_stats.json: per-label frequencies, the labels-per-image histogram, the
per-group count histograms, and the same frequencies and group histograms conditioned on each
category label (the co-occurrence the demo reproduces). Counts, not rates, so the file is exact and
a reader can smooth as it likes. Rerun it when the source or the label map changes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fashion_stack.core import atomic
from fashion_stack.core.config import PROJECT_ROOT
from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.log import get_logger, setup_logging
from fashion_stack.datasets.competition import read_split

RESOURCES = Path(__file__).resolve().parent / "resources"
LABEL_MAP = RESOURCES / "label_map_228.csv"
LABEL_STATS = RESOURCES / "label_stats.json"
DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "data" / "imat2018"
CATEGORY = "category"


def _histogram(counts: np.ndarray) -> list:
    return [int(c) for c in np.bincount(counts)]


def _group_histograms(label_matrix: np.ndarray, label_space: LabelSpace) -> dict:
    return {group: _histogram(label_matrix[:, label_space.group_mask(group)].sum(axis=1))
            for group in label_space.group_names()}


def _nonzero_counts(label_matrix: np.ndarray, label_space: LabelSpace, keep: np.ndarray) -> dict:
    totals = label_matrix.sum(axis=0)
    return {label_space.label_ids[j]: int(totals[j]) for j in np.nonzero(keep & (totals > 0))[0]}


def label_statistics(label_matrix: np.ndarray, label_space: LabelSpace, source: str) -> dict:
    """The statistics document for a (n_images, n_labels) 0/1 matrix over a grouped label space."""
    if not label_space.has_groups():
        raise ValueError("label statistics need a label map with taskName groups (the 228-label map)")
    matrix = np.asarray(label_matrix, dtype=np.int64)
    everything = np.ones(len(label_space), dtype=bool)
    not_category = ~label_space.group_mask(CATEGORY)
    by_category = {}
    for j in np.nonzero(label_space.group_mask(CATEGORY))[0]:
        rows = matrix[matrix[:, j] == 1]
        if len(rows) == 0:
            continue
        by_category[label_space.label_ids[j]] = {
            "n_images": int(len(rows)),
            "label_counts": _nonzero_counts(rows, label_space, not_category),
            "group_count_histograms": _group_histograms(rows, label_space),
        }
    return {
        "source": source,
        "n_images": int(matrix.shape[0]),
        "label_counts": _nonzero_counts(matrix, label_space, everything),
        "cardinality_histogram": _histogram(matrix.sum(axis=1)),
        "group_count_histograms": _group_histograms(matrix, label_space),
        "by_category": by_category,
    }


def derive(source_dir: Path, out_path: Path = LABEL_STATS) -> dict:
    label_space = LabelSpace.from_csv(LABEL_MAP)
    split = read_split(Path(source_dir) / "validation.json", "validation", label_space)
    source = (f"iMaterialist Challenge (Fashion) at FGVC5, validation.json ({len(split.images)} images; "
              f"{split.duplicate_labels_merged} repeated labelIds merged)")
    stats = label_statistics(split.label_matrix(label_space), label_space, source)
    atomic.write_text(out_path, _compact_json(stats))
    return stats


def _compact_json(stats: dict) -> str:
    # one line per top-level key and per category keeps the embedded file small and diffable
    def dump(value) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    lines = [f"  {dump(key)}: {dump(value)}" for key, value in sorted(stats.items()) if key != "by_category"]
    categories = [f"    {dump(cat)}: {dump(entry)}" for cat, entry in sorted(stats["by_category"].items(), key=_numeric)]
    lines.append('  "by_category": {\n' + ",\n".join(categories) + "\n  }")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _numeric(item) -> int:
    return int(item[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dir", type=Path, default=DEFAULT_SOURCE,
                        help="folder holding validation.json(.zip) of iMaterialist 2018")
    parser.add_argument("--out", type=Path, default=LABEL_STATS)
    args = parser.parse_args(argv)
    setup_logging()
    stats = derive(args.source_dir, args.out)
    get_logger("demo").info("wrote %s: %d images, %d labels seen, %d categories",
                            args.out, stats["n_images"], len(stats["label_counts"]), len(stats["by_category"]))


if __name__ == "__main__":
    main()
