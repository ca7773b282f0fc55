"""What every stage receives: the resolved config, the run directory, the data directory,
and the user's redo / member selections."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fashion_stack.core import lineage
from fashion_stack.core.config import PipelineConfig
from fashion_stack.core.labels import LabelSpace
from fashion_stack.core.log import get_logger
from fashion_stack.core.rundir import RunDir


@dataclass
class StageContext:
    config: PipelineConfig
    run: RunDir
    data_dir: Path
    redo: set = field(default_factory=set)  # stage names, or {"all"}
    only_members: Optional[list] = None  # --members: restrict member-level work to these
    executor: object = None  # core.executor: where units run (None: this process, in order)

    def run_units(self, tasks) -> list:
        """Hand independent units to the run's executor; their results, in order."""
        if self.executor is None:
            from fashion_stack.core.executor import LocalExecutor
            self.executor = LocalExecutor(self.run.root)
        return self.executor.map(list(tasks))

    def plan_units(self, stage: str, total: int) -> None:
        """The stage's unit count across all its calls to run_units (progress: done / total, ETA)."""
        self.run_units([])  # makes the executor
        progress = getattr(self.executor, "progress", None)
        if progress is not None:
            progress.plan(stage, total)

    def plan_more_units(self, stage: str, count: int) -> None:
        """Units the stage finds it must run once under way (a member's shared embeddings pass),
        added to its total so that "stage done" is said after the last, not before it."""
        progress = getattr(self.executor, "progress", None)
        if progress is not None:
            progress.add(stage, count)

    def unit_skipped(self, stage: str) -> None:
        """A planned unit that is already done counts as done without running."""
        progress = getattr(self.executor, "progress", None)
        if progress is not None:
            progress.skipped(stage)

    def redo_stage(self, stage: str) -> bool:
        return "all" in self.redo or stage in self.redo

    def selected_members(self) -> list:
        members = self.config.members
        if self.only_members:
            known = {m.name for m in members}
            unknown = [n for n in self.only_members if n not in known]
            if unknown:
                raise ValueError(f"--members: unknown member(s) {unknown}; configured: {sorted(known)}")
            members = [m for m in members if m.name in self.only_members]
        return members

    def data_hash(self, *sections: str, **extra) -> str:
        """Hash of the settings that shape the manifest: the data settings that choose files (not
        speed knobs such as validate_workers) and the demo settings when the data is generated.
        `sections` and `extra` add what a later stage also depends on (folds: the folds section and
        the pool). The files themselves are inputs, not settings: see competition_files."""
        config, data = self.config, self.config.data
        # not data.dir: where the data lies is no setting (a moved or copied data directory, or the
        # same one given by a relative path, holds the same inputs); prepare records its content
        shape = {key: getattr(data, key) for key in
                 ("label_map", "train", "validation", "test", "image_layout", "allow_missing_test_images")}
        shape["generated"] = data.dir is None
        if data.dir is None:
            shape["demo"] = dataclasses.asdict(config.demo)
        full = config.to_dict()
        shape.update({section: full[section] for section in sections}, **extra)
        return lineage.digest(shape)

    def competition_files(self) -> list:
        """The label map and the split files (plain or zipped) that are present: what prepare reads
        besides the images."""
        data = self.config.data
        candidates = [self.data_dir / name for base in (data.label_map, data.train, data.validation, data.test)
                      for name in (base, f"{base}.zip")]
        return [path for path in candidates if path.exists()]

    def label_space(self) -> LabelSpace:
        return LabelSpace.from_csv(self.data_dir / self.config.data.label_map)

    def logger(self, stage: str):
        return get_logger(stage)
