"""What every stage receives: the resolved config, the run directory, the data directory,
and the user's redo / member selections."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.config import PipelineConfig
from core.labels import LabelSpace
from core.log import get_logger
from core.rundir import RunDir


@dataclass
class StageContext:
    config: PipelineConfig
    run: RunDir
    data_dir: Path
    redo: set = field(default_factory=set)  # stage names, or {"all"}
    only_members: Optional[list] = None  # --members: restrict member-level work to these

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

    def data_hash(self, *sections: str) -> str:
        """Hash of the config sections that shape the data, plus the size and mtime of the
        competition files, so that editing train.json or the label map makes the manifest and
        folds stale instead of silently reused."""
        config = self.config
        parts = [config.section_hash("data", "demo" if config.data.dir is None else "data", *sections)]
        data = config.data
        for name in (data.label_map, data.train, data.validation, data.test):
            for candidate in (self.data_dir / name, self.data_dir / f"{name}.zip"):
                if candidate.exists():
                    stat = candidate.stat()
                    parts.append(f"{candidate.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def label_space(self) -> LabelSpace:
        return LabelSpace.from_csv(self.data_dir / self.config.data.label_map)

    def logger(self, stage: str):
        return get_logger(stage)
