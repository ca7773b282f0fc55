"""Where a member trains: the visible accelerators, data parallel over them, and the precision and
compilation that suit them. Resolved once per member (a `Placement`), used by the trainer.

Data parallel is the engine's own: tf.distribute.MirroredStrategy on TensorFlow,
keras.distribution.DataParallel on JAX. PyTorch through Keras has no multi-device fit, so it trains
on one device and says so. Tested without a GPU by splitting the CPU into logical devices
(TensorFlow: tf.config.set_logical_device_configuration; JAX:
XLA_FLAGS=--xla_force_host_platform_device_count=N), which `data_parallel: on` uses.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import keras

from fashion_stack.core.log import get_logger
from fashion_stack.core.registry import ProcessCache

log = get_logger("members")
POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16", "off": "float32"}


@dataclass(frozen=True)
class Accelerators:
    kind: str  # "gpu" | "tpu" | "cpu"
    devices: tuple  # the backend's device names (all visible ones of `kind`)
    compute_capability: Optional[float] = None  # NVIDIA's, of the first GPU


@dataclass(frozen=True)
class Placement:
    backend: str
    kind: str
    devices: tuple  # the devices this member trains on (data parallel when more than one)
    precision_policy: str  # a Keras dtype policy name
    jit_compile: bool
    steps_per_execution: int = 1

    @property
    def replicas(self) -> int:
        return len(self.devices)


def visible_accelerators(backend: Optional[str] = None) -> Accelerators:
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            capability = details.get("compute_capability")
            return Accelerators("gpu", tuple(d.name for d in gpus),
                                float(".".join(map(str, capability))) if capability else None)
        tpus = tf.config.list_logical_devices("TPU")
        if tpus:
            return Accelerators("tpu", tuple(d.name for d in tpus))
        return Accelerators("cpu", tuple(d.name for d in tf.config.list_logical_devices("CPU")))
    if backend == "jax":
        import jax
        devices = jax.devices()
        kind = devices[0].platform
        capability = getattr(devices[0], "compute_capability", None)
        return Accelerators("gpu" if kind in ("gpu", "cuda", "rocm") else kind, tuple(str(d) for d in devices),
                            float(capability) if capability else None)
    if backend == "torch":
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return Accelerators("gpu", tuple(f"cuda:{i}" for i in range(torch.cuda.device_count())),
                                major + minor / 10)
        return Accelerators("cpu", ("cpu",))
    return Accelerators("cpu", ("cpu",))


def resolve_precision(setting: str, accelerators: Accelerators) -> str:
    """auto: bfloat16 where the hardware computes it (Ampere and newer, TPUs); float16 with loss
    scaling on older GPUs (bfloat16 would be emulated); float32 on CPUs."""
    if setting == "auto":
        if accelerators.kind == "tpu" or (accelerators.kind == "gpu" and (accelerators.compute_capability or 0) >= 8):
            setting = "bfloat16"
        elif accelerators.kind == "gpu":
            setting = "float16"
        else:
            setting = "off"
    if setting not in POLICIES:
        raise ValueError(f"mixed_precision {setting!r}; use auto, bfloat16, float16 or off")
    return POLICIES[setting]


def resolve_jit(setting: str, backend: str, kind: str) -> bool:
    """auto: XLA on JAX (its only fast path) and on accelerators; not for TensorFlow on CPU,
    where it was measured slower than TensorFlow's own kernels."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    if backend == "jax":
        return True
    return backend == "tensorflow" and kind != "cpu"


def resolve_placement(member, backend: Optional[str] = None) -> Placement:
    backend = backend or keras.backend.backend()
    found = visible_accelerators(backend)
    devices = found.devices
    wanted = member.hardware.data_parallel
    parallel = wanted == "on" or (wanted == "auto" and found.kind != "cpu")
    if not parallel or backend not in ("tensorflow", "jax"):
        if parallel and len(devices) > 1:
            log.warning("%s: Keras on %s trains on one device (no multi-device fit); %d visible",
                        member.name, backend, len(devices))
        devices = devices[:1]
    return Placement(backend, found.kind, tuple(devices), resolve_precision(member.hardware.mixed_precision, found),
                     resolve_jit(member.hardware.jit_compile, backend, found.kind), max(1, int(member.hardware.steps_per_execution)))


def scaled_learning_rate(learning_rate: float, rule: str, replicas: int) -> float:
    """The global batch is batch_size x replicas; the linear rule (Goyal et al. 2017) keeps the
    per-example step size, sqrt is the gentler choice for adaptive optimizers."""
    if rule == "linear":
        return learning_rate * replicas
    if rule == "sqrt":
        return learning_rate * math.sqrt(replicas)
    return learning_rate


_STRATEGIES = ProcessCache("tf strategies", "one MirroredStrategy per device set: TensorFlow allows one per devices")


def _tf_strategy(devices: tuple):
    import tensorflow as tf
    if devices not in _STRATEGIES:
        cpu_only = all("CPU" in name.upper() for name in devices)
        # NCCL all-reduce is for GPUs; logical CPU devices reduce through one device
        reduce = tf.distribute.ReductionToOneDevice() if cpu_only else None
        _STRATEGIES[devices] = tf.distribute.MirroredStrategy(list(devices), cross_device_ops=reduce)
    return _STRATEGIES[devices]


@contextmanager
def placement_scope(placement: Placement):
    """Build, compile, fit and predict inside: the model's variables live on every replica."""
    if placement.replicas == 1:
        yield
    elif placement.backend == "tensorflow":
        with _tf_strategy(placement.devices).scope():
            yield
    elif placement.backend == "jax":
        import jax
        previous = keras.distribution.distribution()
        by_name = {str(d): d for d in jax.devices()}
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=[by_name[name] for name in placement.devices]))
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)
    else:
        yield


def replicas_in(model: keras.Model) -> int:
    """How many replicas hold the model's variables (1 outside data parallel)."""
    if keras.backend.backend() == "tensorflow":
        strategy = getattr(model, "distribute_strategy", None)
        return int(getattr(strategy, "num_replicas_in_sync", 1))
    distribution = keras.distribution.distribution()
    if distribution is not None and hasattr(distribution, "device_mesh"):
        return int(distribution.device_mesh.devices.size)
    return 1


def share_gpu(fraction: float) -> None:
    """A unit given a fraction of a GPU (Ray's num_gpus < 1) must not take all its memory:
    TensorFlow then allocates as it grows instead of up front. JAX reads its share from
    XLA_PYTHON_CLIENT_MEM_FRACTION, which must be set before it starts (the Ray runtime_env)."""
    if not 0 < fraction < 1 or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # this process already initialised its GPUs: nothing to change now
            log.warning("could not turn on memory growth for %s: the GPU was already initialised", gpu.name)
