"""The fine-tuning ablation's grid: one member per input policy x size, written as an overlay
config that the pipeline's own loader accepts, with the config's own member first as baseline."""
from pathlib import Path

import pytest

from benchmarks.ablate_finetune import write_overlay
from benchmarks.ablate_heads import parse_inputs
from fashion_stack.core.config import load_config


def test_grid_overlay_loads_with_each_row_sized_and_named(tmp_path):
    inputs = parse_inputs("pad:288x192,crop:192,stretch:192")
    path, names, baseline = write_overlay("configs/ccp.yaml", "mobilenetv2_finetune", inputs, tmp_path)
    config = load_config(path)
    shipped = next(m for m in load_config("configs/ccp.yaml").members if m.name == "mobilenetv2_finetune")
    # The baseline is ccp.yaml's own fine-tuned member, as configured, moved to the front.
    height, width = shipped.input_size
    own = width if height == width else f"{height}x{width}"
    assert baseline == f"mobilenetv2_finetune_{shipped.resize}_{own}"
    assert names[0] == baseline and [m.name for m in config.members] == names
    rows = {m.name: m for m in config.members}
    pad = rows["mobilenetv2_finetune_pad_288x192"]
    assert (pad.resize, pad.input_size) == ("pad", (288, 192))
    crop = rows["mobilenetv2_finetune_crop_192"]
    assert (crop.resize, crop.input_size) == ("crop", (192, 192))
    # Everything but the input is the config's member: same mode, schedule and learning rates.
    for row in config.members:
        assert (row.mode, row.head_epochs, row.finetune_epochs, row.finetune_learning_rate, row.pooling) == (
            shipped.mode, shipped.head_epochs, shipped.finetune_epochs, shipped.finetune_learning_rate,
            shipped.pooling)
    # The folds are the config's, so rows pair fold by fold with the shipped run.
    assert (config.folds.k, config.folds.seed) == (3, 42)


def test_baseline_is_added_when_the_grid_leaves_it_out(tmp_path):
    _, names, baseline = write_overlay("configs/ccp.yaml", "mobilenetv2_finetune", parse_inputs("crop:160"), tmp_path)
    assert names == [baseline, "mobilenetv2_finetune_crop_160"]


def test_unknown_member_is_named_in_the_error(tmp_path):
    with pytest.raises(SystemExit, match="no member 'resnet'"):
        write_overlay("configs/ccp.yaml", "resnet", parse_inputs("pad:192"), Path(tmp_path))


def test_a_named_baseline_replaces_the_members_own(tmp_path):
    # The shipped table was measured against an earlier default; --baseline reproduces it.
    _, names, baseline = write_overlay("configs/ccp.yaml", "mobilenetv2_finetune", parse_inputs("pad:288x192"),
                                       tmp_path, baseline_input="stretch:192")
    assert baseline == "mobilenetv2_finetune_stretch_192"
    assert names == [baseline, "mobilenetv2_finetune_pad_288x192"]
    # A baseline that is already in the grid moves to the front instead of being added twice.
    _, names, baseline = write_overlay("configs/ccp.yaml", "mobilenetv2_finetune",
                                       parse_inputs("pad:192,stretch:192"), tmp_path, baseline_input="stretch:192")
    assert names == ["mobilenetv2_finetune_stretch_192", "mobilenetv2_finetune_pad_192"]


def test_recipe_rows_are_the_member_with_their_settings_measured_against_the_frozen_member(tmp_path):
    from benchmarks.ablate_finetune import parse_recipe, write_recipe_overlay
    recipe = parse_recipe(["lpft_all", "head_init=embeddings", "unfreeze=all", "warmup_fraction=0.1"])
    assert recipe == ("lpft_all", {"head_init": "embeddings", "unfreeze": "all", "warmup_fraction": 0.1})
    path, names, baseline = write_recipe_overlay("configs/ccp.yaml", "mobilenetv2_finetune", [recipe], tmp_path,
                                                 against="mobilenetv2_frozen")
    assert baseline == "mobilenetv2_frozen"
    assert names == ["mobilenetv2_frozen", "mobilenetv2_finetune", "mobilenetv2_finetune_lpft_all"]
    rows = {m.name: m for m in load_config(path).members}
    shipped = next(m for m in load_config("configs/ccp.yaml").members if m.name == "mobilenetv2_finetune")
    row = rows["mobilenetv2_finetune_lpft_all"]
    assert (row.head_init, row.unfreeze, row.warmup_fraction) == ("embeddings", "all", 0.1)
    assert (row.backbone, row.input_size, row.finetune_epochs) == (
        shipped.backbone, shipped.input_size, shipped.finetune_epochs)
    assert rows["mobilenetv2_frozen"].mode == "frozen"
    with pytest.raises(SystemExit, match="key=value"):
        parse_recipe(["lpft", "unfreeze"])
