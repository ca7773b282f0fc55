"""Validator for a competition submission CSV, usable on any file.

    fashion-stack validate runs/<run>                 # the run's submission.csv, test list and label map
    fashion-stack validate FILE --test TEST_JSON [--label-map CSV] [--max-labels 23]

Exit 0 and "valid: N rows" when the file is valid; otherwise every problem found, one per line,
each naming the line and imageId, and exit 1. The format is the one the competition scores:
header `image_id,label_id`, one row per test image, labels space-separated.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

from fashion_stack.core.metrics import MAX_LABELS

HEADER = ["image_id", "label_id"]
EXAMPLES_SHOWN = 20
# A row is an image_id and at most a few dozen label ids; a longer line is not a submission row
# (and would otherwise be read whole into memory). Below csv's own field limit (131,072).
MAX_LINE_BYTES = 64 * 1024


def validate_submission(path: str | Path, test_ids: Sequence, label_ids: Optional[Iterable] = None,
                        min_labels: int = 1, max_labels: int = MAX_LABELS) -> list:
    """Every problem of the submission at `path` as a message; an empty list means valid.

    `test_ids`: the test set's imageIds (any order); `label_ids`: the label map's ids, or None
    to skip the unknown-label check. The file is read line by line (memory bounded by the test
    set, not the file); CRLF line ends and blank lines at the end are accepted, as Kaggle does.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as err:
        return [f"{path}: cannot read ({err})"]
    problems: list = []
    known_labels = None if label_ids is None else {str(lab) for lab in label_ids}
    expected = {str(i).strip() for i in test_ids}
    first_line_of: dict = {}
    with handle:
        lines = _lines(handle, path, problems)
        header = next(lines, None)
        if header is None:
            return problems + [f"{path}: empty file; expected header {','.join(HEADER)}"]
        header_cells = _cells(header[1] or "", 1, path, problems)
        problems += _check_header(header_cells, path) if header_cells is not None else []
        blank_lines = []  # fine at the end of the file; between rows each is a malformed row
        for line_no, text in lines:
            if text is not None and not text.strip():
                blank_lines.append(line_no)
                continue
            problems += [f"{path}: line {n}: malformed: 0 column(s) (a blank line between rows)" for n in blank_lines]
            blank_lines = []
            row = _cells(text, line_no, path, problems) if text is not None else None
            if row is not None:
                problems += _check_row(row, line_no, path, expected, known_labels,
                                       first_line_of, min_labels, max_labels)
    problems += _check_missing(expected, first_line_of, path)
    return problems


def _lines(handle, path: Path, problems: list):
    """(line number, text without its line end) for each line; text is None for a line over
    MAX_LINE_BYTES, which is reported and skipped without reading it into memory whole."""
    line_no = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        line_no += 1
        if len(raw) > MAX_LINE_BYTES:
            problems.append(f"{path}: line {line_no}: longer than {MAX_LINE_BYTES} bytes (a row holds one image_id "
                            "and its label ids, a few hundred bytes); is this a submission file? The line is skipped")
            while raw and not raw.endswith(b"\n"):
                raw = handle.readline(MAX_LINE_BYTES)
            yield line_no, None
            continue
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            problems.append(f"{path}: starts with a UTF-8 byte-order mark; write plain UTF-8 without BOM")
            raw = raw[3:]
        yield line_no, _decode(raw, path, line_no, problems).rstrip("\r\n")


def _cells(text: str, line_no: int, path: Path, problems: list):
    """The CSV cells of one line, read strictly; None (and the problem noted) for a line a CSV
    reader such as Kaggle's would read differently: an unterminated quote swallows the lines after
    it, a bare CR (old Mac line ends) is a line end inside this line."""
    if "\r" in text:
        problems.append(f"{path}: line {line_no}: holds a bare CR (old Mac line ends?); a CSV reader splits the line "
                        "there: save the file with LF (or CRLF) line ends")
        return None
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as err:
        problems.append(f"{path}: line {line_no}: malformed CSV ({err}); an unterminated quote makes a CSV reader "
                        "take the following lines as part of this row: close or remove the quote")
        return None


def printable(text: str) -> str:
    """Text from the file as it may be printed: as is when every character is printable, else its
    repr (a NUL or an escape sequence would otherwise hide in the terminal: '\x0062' shows as 62)."""
    return text if text.isprintable() else repr(text)


def _decode(raw: bytes, path: Path, line_no: int, problems: list) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        problems.append(f"{path}: bad encoding: line {line_no}: byte 0x{raw[err.start]:02x} at column {err.start + 1} "
                        "is not UTF-8; save the file as UTF-8")
        # keep checking the rest, so one bad byte does not hide the other problems
        return raw.decode("utf-8", errors="replace")


def _check_header(header: list, path: Path) -> list:
    if [cell.strip() for cell in header] == HEADER:
        return []
    return [f"{path}: line 1: header is {','.join(header)!r}; expected {','.join(HEADER)!r}"]


def _check_row(row, line_no, path, expected, known_labels, first_line_of, min_labels, max_labels) -> list:
    where = f"{path}: line {line_no}"
    if len(row) != 2:
        return [f"{where}: malformed: {len(row)} column(s) {row!r}; expected 2 (image_id,label_id)"]
    image_id, label_field = row[0].strip(), row[1]
    where = f"{where} (image_id {image_id!r})"
    problems = []
    if image_id in first_line_of:
        problems.append(f"{where}: duplicate image_id, first on line {first_line_of[image_id]}")
    else:
        first_line_of[image_id] = line_no
    if image_id not in expected:
        problems.append(f"{where}: extra image_id, not in the test set")
    labels = label_field.split()
    if not labels:
        problems.append(f"{where}: empty label_id field; every image needs {min_labels}..{max_labels} labels")
    elif len(labels) < min_labels:
        problems.append(f"{where}: {len(labels)} label(s), fewer than the minimum {min_labels}")
    if len(labels) > max_labels:
        problems.append(f"{where}: {len(labels)} labels, more than the maximum {max_labels}")
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if repeated:
        problems.append(f"{where}: repeated label(s) {' '.join(map(printable, repeated))}")
    if known_labels is not None:
        unknown = list(dict.fromkeys(lab for lab in labels if lab not in known_labels))
        if unknown:
            problems.append(f"{where}: unknown label(s) {' '.join(map(printable, unknown))} not in the label map")
    return problems


def _check_missing(expected: set, first_line_of: dict, path: Path) -> list:
    missing = sorted(expected - set(first_line_of), key=_natural_key)
    if not missing:
        return []
    shown = ", ".join(missing[:EXAMPLES_SHOWN])
    more = f" (and {len(missing) - EXAMPLES_SHOWN} more)" if len(missing) > EXAMPLES_SHOWN else ""
    return [f"{path}: missing {len(missing)} test image_id(s): {shown}{more}"]


def _natural_key(image_id: str):
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


SHIPPED_LABEL_MAP = Path(__file__).resolve().parent.parent / "datasets" / "resources" / "label_map_228.csv"


class TargetError(ValueError):
    """What to validate against cannot be found; the message names what is missing and the flag that gives it."""


def resolve_target(target: Path, test: Optional[Path] = None, label_map: Optional[Path] = None) -> tuple:
    """(submission CSV, test list, label map, where each came from) for what the user typed: a run
    directory (its submission.csv, and the test list and label map of the data it ran on, from its
    config.yaml and env.json), a file inside a run directory (the same, found from the file up), or
    a bare file (--test needed; the shipped 228-label map unless --label-map). Flags always win."""
    target = Path(target)
    run_root = _run_root_of(target)
    submission = target / "submission.csv" if target.is_dir() else target
    if target.is_dir() and run_root is None:
        raise TargetError(f"{target} is a folder but not a run directory (no config.yaml and env.json); "
                          "give a submission CSV or a run directory runs/<run>")
    sources = {}
    if run_root is not None:
        data_dir, names = _run_data(run_root)
        if test is None:
            test = _existing(data_dir / names["test"])
            sources["test"] = f"from the run {run_root}"
        if label_map is None:
            label_map = data_dir / names["label_map"]
            sources["label map"] = f"from the run {run_root}"
    if test is None:
        raise TargetError(f"{submission} is not inside a run directory, so its test list is unknown: give "
                          "--test test.json (or test.json.zip), or validate the run: fashion-stack validate runs/<run>")
    if label_map is None:
        label_map = SHIPPED_LABEL_MAP
        sources["label map"] = "the shipped 228-label map (--label-map overrides)"
    return submission, Path(test), Path(label_map), sources


def _run_root_of(path: Path) -> Optional[Path]:
    """The run directory holding `path` (or `path` itself): the nearest folder up with config.yaml and env.json."""
    path = path.absolute()
    for folder in [path] + list(path.parents) if path.is_dir() else list(path.parents):
        if (folder / "config.yaml").is_file() and (folder / "env.json").is_file():
            return folder
    return None


def _run_data(run_root: Path) -> tuple:
    import json

    import yaml
    try:
        env = json.loads((run_root / "env.json").read_text(encoding="utf-8"))
        data = (yaml.safe_load((run_root / "config.yaml").read_text(encoding="utf-8")) or {}).get("data", {})
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise TargetError(f"{run_root}: cannot read its config.yaml / env.json ({err}); give --test and --label-map") from err
    if not env.get("data_dir"):
        raise TargetError(f"{run_root / 'env.json'} does not say which data the run used; give --test and --label-map")
    names = {"test": data.get("test") or "test.json", "label_map": data.get("label_map") or "label_map.csv"}
    return Path(env["data_dir"]), names


def _existing(path: Path) -> Path:
    zipped = path.with_name(path.name + ".zip")
    return zipped if not path.exists() and zipped.exists() else path


def main(argv: Optional[list] = None, prog: Optional[str] = None) -> int:
    args = _parse_args(argv, prog)
    # imported here so that `validate_submission` itself needs nothing beyond the standard library
    from fashion_stack.core.labels import LabelError, LabelSpace
    from fashion_stack.datasets.competition import CompetitionDataError, read_split
    try:
        submission, test, label_map, sources = resolve_target(args.file, args.test, args.label_map)
        test_ids = read_split(test, "test", labelled=False).image_ids
        label_ids = LabelSpace.from_csv(label_map).label_ids
    except (OSError, CompetitionDataError, LabelError, TargetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checking {submission} against {len(test_ids)} test ids in {test} and {len(label_ids)} labels in "
          f"{label_map}" + "".join(f"; {what}: {where}" for what, where in sources.items()))
    problems = validate_submission(submission, test_ids, label_ids, args.min_labels, args.max_labels)
    if not problems:
        print(f"valid: {len(test_ids)} rows")
        return 0
    shown = problems if args.limit == 0 else problems[:args.limit]
    for problem in shown:
        print(problem)
    if len(shown) < len(problems):
        print(f"... {len(problems) - len(shown)} more problem(s) not shown; --limit 0 shows all")
    print(f"invalid: {len(problems)} problem(s)")
    return 1


def _parse_args(argv, prog=None):
    parser = argparse.ArgumentParser(prog=prog or "python -m fashion_stack.submissions.validate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, metavar="RUN_OR_FILE",
                        help="a run directory (runs/<run>: its submission.csv), a submission CSV inside one, "
                             "or any submission CSV (then --test is needed)")
    parser.add_argument("--test", type=Path, help="test.json (or test.json.zip); default: the run's")
    parser.add_argument("--label-map", type=Path, help="label map CSV (labelId,labelName,...); default: the run's, "
                        "else the shipped 228-label map")
    parser.add_argument("--min-labels", type=int, default=1)
    parser.add_argument("--max-labels", type=int, default=MAX_LABELS)
    parser.add_argument("--limit", type=int, default=200, help="problems printed at most (0: all)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
