"""benchmarks/bench_memory.py's stand-in weights: offline, the members still take the config's
pretrained path (head, then top blocks, BatchNorm in inference mode), which is what it measures."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from benchmarks.bench_memory import random_trunk_weights  # noqa: E402
from fashion_stack.core.config import load_config, parse_override  # noqa: E402
from fashion_stack.models.backbones import create_backbone  # noqa: E402
from fashion_stack.models.trainer import finetune_phases  # noqa: E402


def test_random_trunk_files_put_every_member_on_the_pretrained_path(tmp_path):
    overrides = random_trunk_weights(tmp_path, "demo")
    plain = load_config("demo")
    config = load_config("demo", [parse_override(text) for text in overrides])
    assert [m.name for m in config.members] == [m.name for m in plain.members]
    for before, member in zip(plain.members, config.members):
        assert before.weights is None and member.weights.endswith(f"{member.backbone}_random.weights.h5")
        # from scratch: one phase, everything trains; with a weights file: the head, then the top blocks
        assert [p.name for p in finetune_phases(before)] == ["all"]
        assert [p.name for p in finetune_phases(member)][-1] == member.unfreeze
        trunk = create_backbone(member.backbone, 48, member.weights)  # loads at another input size
        saved = create_backbone(member.backbone, 48, None)
        saved.load_weights(member.weights)
        assert all(np.array_equal(a, b) for a, b in zip(trunk.get_weights(), saved.get_weights()))
    # made once: a second call reuses the files
    stamp = (tmp_path / "trunk_weights").stat().st_mtime_ns
    assert random_trunk_weights(tmp_path, "demo") == overrides
    assert (tmp_path / "trunk_weights").stat().st_mtime_ns == stamp
