"""weights: random, what the rehearsal overlay and benchmarks/bench_memory.py give the members offline:
random trunks that still take the config's pretrained path (head, then top blocks, BatchNorm in
inference mode), so the rehearsal runs, and the benchmark measures, what the real run trains."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from benchmarks.bench_memory import trunk_weight_overrides  # noqa: E402
from fashion_stack.core.config import ConfigError, load_config, parse_override  # noqa: E402
from fashion_stack.models.backbones import create_backbone  # noqa: E402
from fashion_stack.models.trainer import finetune_phases  # noqa: E402


def _with(config: str, trunk_weights: str):
    return load_config(config, [parse_override(text) for text in trunk_weight_overrides(trunk_weights)])


def test_random_weights_keep_the_competition_configs_pretrained_path():
    real = load_config("imaterialist2018")
    assert {m.weights for m in real.members} == {"imagenet"}
    random, scratch = _with("imaterialist2018", "random"), _with("imaterialist2018", "null")
    for configured, member, from_scratch in zip(real.members, random.members, scratch.members):
        assert member.weights == "random" and from_scratch.weights is None
        assert [p.name for p in finetune_phases(member)] == [p.name for p in finetune_phases(configured)]
        assert [p.name for p in finetune_phases(member)] == ["head", configured.unfreeze]
        assert [p.name for p in finetune_phases(from_scratch)] == ["all"]  # the path the config never runs


def test_random_weights_leave_a_from_scratch_member_from_scratch():
    demo = _with("demo", "random")  # the demo's tiny CNNs have no pretrained weights
    assert {m.weights for m in demo.members} == {None}
    assert {p.name for m in demo.members for p in finetune_phases(m)} == {"all"}
    # a member's own value, set after the forcing, still wins
    mixed = load_config("demo", [parse_override("every_member.weights=random"),
                                 parse_override("members.tiny_cnn_48.weights=random")])
    assert [m.weights for m in mixed.members] == [None, "random"]


def test_a_random_trunk_is_built_untrained_and_offline():
    keras.utils.set_random_seed(0)
    trunk = create_backbone("mobilenet_v2", 64, "random")  # no download, no file
    keras.utils.set_random_seed(0)
    same = create_backbone("mobilenet_v2", 64, None)
    assert trunk.input_shape == (None, 64, 64, 3)
    assert all(np.array_equal(a, b) for a, b in zip(trunk.get_weights(), same.get_weights()))


def test_a_weights_value_that_is_neither_a_file_nor_a_keyword_is_refused_at_load(tmp_path):
    from fashion_stack.pipeline import registered_choices
    with pytest.raises(ConfigError, match=r"weights: file randm not found.*or random for random init trained"):
        load_config("demo", [parse_override("members.tiny_cnn_48.weights=randm")], registered_choices())
