"""The paper GPU-hours estimate: FLOPs counted at each member's own input shape, arithmetic of the plan."""
from __future__ import annotations

import pytest

from benchmarks import gpu_estimate
from fashion_stack.core.config import load_config


def _config(**member):
    settings = {"name": "m", "backbone": "tiny_cnn", "input_size": 32, "weights": "imagenet",
                "head_epochs": 1, "finetune_epochs": 2, "tta_flip": True, **member}
    return load_config(None, [{"data": {"pool": "validation"}, "members": [settings]}])


def test_estimate_counts_a_non_square_member_at_its_own_shape_and_multiplies_out_the_plan():
    config = _config(input_size=[48, 32])
    counts = {"tiny_cnn@48x32": {"gflops": 2.0}}
    (row,) = gpu_estimate.estimate(config, counts, utilisation=0.5)
    assert row["size"] == "48x32"
    # regime b (pool = validation): one unit trains on all of train, predicts validation + test
    train = gpu_estimate.TRAIN_IMAGES * 2.0e9 * (1 * 1 + 2 * 3)
    predict = (gpu_estimate.VALIDATION_IMAGES + gpu_estimate.TEST_IMAGES) * 2.0e9 * 2  # flip TTA
    assert row["train_pflops"] == pytest.approx(train / 1e15)
    assert row["h200_hours"] == pytest.approx((train + predict) / (gpu_estimate.H200_BF16_FLOPS * 0.5) / 3600)


def test_xla_counts_twice_the_flops_for_twice_the_pixels():
    pytest.importorskip("jax")
    counts = gpu_estimate.forward_gflops([["tiny_cnn", 32, 32], ["tiny_cnn", 64, 32]])
    ratio = counts["tiny_cnn@64x32"]["gflops"] / counts["tiny_cnn@32x32"]["gflops"]
    assert ratio == pytest.approx(2.0, rel=0.1)
