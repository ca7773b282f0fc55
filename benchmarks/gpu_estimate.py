"""Paper estimate of the full competition's GPU time, before anyone rents a GPU.

    python -m benchmarks.gpu_estimate [--config configs/imaterialist2018.yaml] [--utilisation 0.35]

FLOPs per image come from Keras's own models: each backbone at the member's size is lowered with
JAX and XLA's cost analysis counts its forward pass (run in a subprocess with KERAS_BACKEND=jax,
so this works from a TensorFlow environment too, as long as jax is installed). Training a layer
costs about 3x its forward pass (forward, gradient w.r.t. activations, w.r.t. weights); a frozen
trunk costs 1x. Images x epochs x units come from the config (regime b: one unit per member on
all of train; regime a: k units on (k-1)/k of the pool). The rate is an H200's dense bf16 peak
(about 790 TFLOP/s, as the device notes measured) times a stated utilisation: CNNs with
depthwise-free 3x3 convolutions at batch 64 reach 30-45% of peak in practice; the estimate is a
plan, not a measurement (benchmarks/gpu_check.sh measures it on a real GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fashion_stack.models.backbones import resolve_input_spec  # noqa: E402

H200_BF16_FLOPS = 790e12
TRAIN_IMAGES, VALIDATION_IMAGES, TEST_IMAGES = 1_014_544, 9_897, 39_706

_COUNTER = r"""
import json, sys
import jax, keras
from fashion_stack.models.backbones import create_backbone
out = {}
for name, height, width in json.loads(sys.argv[1]):
    trunk = create_backbone(name, (height, width), None)
    x = jax.numpy.zeros((1, height, width, 3), "float32")
    tv = [v.value for v in trunk.trainable_variables]
    ntv = [v.value for v in trunk.non_trainable_variables]
    fwd = jax.jit(lambda tv, ntv, x: trunk.stateless_call(tv, ntv, x, training=False)[0])
    cost = fwd.lower(tv, ntv, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out[f"{name}@{height}x{width}"] = {"gflops": float(cost["flops"]) / 1e9, "params": int(trunk.count_params())}
print(json.dumps(out))
"""


def forward_gflops(backbones: list) -> dict:
    """{"backbone@HxW": {gflops per image (forward), params}} counted by XLA, for [backbone, height, width]
    triples (non-square inputs are counted at their own shape)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _COUNTER, json.dumps(backbones)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=900)
    if done.returncode:
        raise SystemExit(f"FLOP count failed (is jax installed?):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def unit_plan(config) -> list:
    """(member, units, training images per unit, predicted images per unit) for the config."""
    pool = {"validation": VALIDATION_IMAGES, "train": TRAIN_IMAGES,
            "train+validation": TRAIN_IMAGES + VALIDATION_IMAGES}[config.data.pool]
    k = config.folds.k
    rows = []
    for member in config.members:
        if member.mode == "probe":  # no trunk of its own: it reads other members' embeddings
            continue
        if config.data.pool == "validation":
            rows.append((member, 1, TRAIN_IMAGES, VALIDATION_IMAGES + TEST_IMAGES))
        else:
            rows.append((member, k, pool * (k - 1) // k, pool // k + TEST_IMAGES))
    return rows


def count_shape(member) -> tuple:
    """(backbone, height, width): what forward_gflops counts for this member."""
    spec = resolve_input_spec(member)
    return member.backbone, spec.height, spec.width


def count_key(member) -> str:
    return "{}@{}x{}".format(*count_shape(member))


def estimate(config, counts: dict, utilisation: float) -> list:
    rate = H200_BF16_FLOPS * utilisation
    table = []
    for member, units, train_images, predicted in unit_plan(config):
        gflops = counts[count_key(member)]["gflops"]
        head, tuned = member.head_epochs, member.finetune_epochs
        if member.weights is None:  # from scratch: one phase, the whole net trains
            head, tuned = 0, head + tuned
        # head phase: frozen trunk, forward only; fine-tuning: ~3x (unfreeze top: still a full
        # forward and a partial backward; counted as 3x, an upper bound)
        train_flops = units * train_images * gflops * 1e9 * (head * 1 + tuned * 3)
        tta = 2 if member.tta_flip else 1
        predict_flops = units * predicted * gflops * 1e9 * tta
        hours = (train_flops + predict_flops) / rate / 3600
        table.append({"member": member.name, "backbone": member.backbone,
                      "size": resolve_input_spec(member).size_name, "gflops_per_image": gflops,
                      "units": units, "train_images_per_unit": train_images, "epochs": f"{head}+{tuned}",
                      "train_pflops": train_flops / 1e15, "predict_pflops": predict_flops / 1e15,
                      "h200_hours": hours})
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "imaterialist2018.yaml")
    parser.add_argument("--utilisation", type=float, default=0.35)
    parser.add_argument("--pool", choices=["validation", "train+validation"], help="override data.pool")
    args = parser.parse_args(argv)
    from fashion_stack.core.config import load_config
    overrides = [{"data": {"pool": args.pool}}] if args.pool else []
    config = load_config(args.config, overrides)
    wanted = sorted({count_shape(m) for m in config.members if m.mode != "probe"})
    counts = forward_gflops(wanted)
    table = estimate(config, counts, args.utilisation)
    print(f"config {args.config.name}, pool {config.data.pool}, k={config.folds.k}; "
          f"H200 bf16 {H200_BF16_FLOPS / 1e12:.0f} TFLOP/s x {args.utilisation:.0%} utilisation")
    print("| member | size | GFLOPs/img (fwd, XLA) | units | train imgs/unit | epochs head+tuned | train PFLOP | predict PFLOP | H200-hours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['member']} | {row['size']} | {row['gflops_per_image']:.2f} | {row['units']} | "
              f"{row['train_images_per_unit']:,} | {row['epochs']} | {row['train_pflops']:,.0f} | "
              f"{row['predict_pflops']:,.1f} | {row['h200_hours']:.1f} |")
    total = sum(r["h200_hours"] for r in table)
    print(f"| total | | | | | | | | {total:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
