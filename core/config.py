"""Pipeline configuration: code defaults, then a YAML file, then command-line overrides.

The schema is a tree of dataclasses. Loading a YAML key that the schema does not know is an
error naming the key's dotted path, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import annotated_types
import yaml
from annotated_types import Ge, Gt, Interval, MinLen

from fashion_stack.core.lineage import digest
from fashion_stack.core.metrics import MAX_LABELS, MetricName
from fashion_stack.core.registry import settable_fields


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class PluginSpec:
    """A plug-in chosen by name, with its own settings: in YAML a bare name (`xgboost`) or
    `{name: xgboost, params: {n_estimators: 150}}`. The plug-in class declares its settings
    (core.registry); when the config loads with that registry, `params` is checked against them
    and completed with their defaults."""
    name: str
    params: dict = field(default_factory=dict)


def plugin(name: str, **params) -> "PluginSpec":
    return PluginSpec(name, dict(params))


def as_plugin_spec(value) -> PluginSpec:
    """A PluginSpec as is, or a bare name (what code that builds configs by hand may pass)."""
    return value if isinstance(value, PluginSpec) else PluginSpec(str(value))


# how an image of another aspect becomes the member's input (models.image_decode, the one reader)
ResizePolicy = Literal["stretch", "pad", "crop"]


@dataclass
class DataConfig:
    dir: Optional[str] = None  # None: generate the built-in demo dataset into the cache
    label_map: str = "label_map.csv"
    train: str = "train.json"
    validation: str = "validation.json"
    test: str = "test.json"
    # "train+validation": members train k-fold over both (regime a).
    # "train": k-fold over train alone. "validation": members train on train, predict the
    # validation pool and test; the stacker trains k-fold on validation (regime b, 1M images).
    pool: Literal["train+validation", "train", "validation"] = "train+validation"
    allow_missing_test_images: bool = False  # a submission needs every test row
    # "flat": images/<imageId>.jpg (CCP, the demo). "per_split": images/<split>/<imageId>.jpg, needed
    # for the real competition, whose train, validation and test files reuse the same imageIds.
    image_layout: Literal["flat", "per_split"] = "flat"
    validate_workers: Annotated[int, Ge(1)] = 2


@dataclass
class DownloadConfig:
    workers: Annotated[int, Ge(1)] = 16
    timeout_s: Annotated[float, Gt(0)] = 10.0
    retries: Annotated[int, Ge(0)] = 3
    backoff_s: Annotated[float, Ge(0)] = 0.5
    max_side: Annotated[int, Ge(16)] = 299  # fit within max_side x max_side, aspect kept
    jpeg_quality: Annotated[int, Interval(ge=1, le=100)] = 90


@dataclass
class DemoConfig:
    n_train: Annotated[int, Ge(1)] = 600
    n_validation: Annotated[int, Ge(0)] = 200
    n_test: Annotated[int, Ge(1)] = 200
    image_size: Annotated[int, Ge(16)] = 96
    seed: int = 0


@dataclass
class FoldsConfig:
    k: Annotated[int, Ge(2)] = 3
    seed: int = 42


def input_size_pair(value):
    """A member's input_size in its one form: None, or (height, width). One number is a square;
    a [height, width] list becomes a tuple. Anything else is returned as is, for the loader to
    refuse by its key."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, list):
        return tuple(value)
    return value


@dataclass
class HardwareConfig:
    """A member's `hardware:` section: how it runs, not what it computes (older configs' flat
    keys are read as this: see upgrade_hardware)."""
    # Scale settings (issue: members at the competition's size). Enumerations are Literal so the
    # loader refuses a typo when the config loads, not when the members stage reaches it.
    # auto: bfloat16 where the accelerator computes it natively (NVIDIA compute capability >= 8,
    # TPU), float16 with loss scaling on older GPUs, float32 on CPU (bf16 is emulated there, slower)
    mixed_precision: Literal["auto", "bfloat16", "float16", "off"] = "auto"
    # auto: XLA on JAX and on GPUs; off for TensorFlow on CPU, where XLA was measured slower
    jit_compile: Literal["auto", "on", "off"] = "auto"
    steps_per_execution: int = 1  # >1 runs several steps per host round trip (small models on GPUs)
    # Data parallel over every visible accelerator (auto: when there are several; on: also the
    # logical CPU devices, which is how it is tested without a GPU); batch_size is per device
    data_parallel: Literal["auto", "on", "off"] = "auto"
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"  # learning rate x replicas (or sqrt)
    # Resume within minutes: a checkpoint (weights, optimizer, RNG state, position in the epoch)
    # every checkpoint_steps training steps (0: off) and every checkpoint_minutes (0: off), and at
    # each epoch's end
    checkpoint_steps: int = 0
    checkpoint_minutes: float = 5.0
    # Decoded-image cache for training (prediction is never cached). auto: memory when the
    # member's training images fit cache_budget_gb, else disk under the run directory, else none
    cache: Literal["auto", "memory", "disk", "none"] = "auto"
    cache_budget_gb: float = 4.0
    reader: Literal["auto", "tfdata", "process"] = "auto"  # auto: tf.data on TensorFlow, processes elsewhere
    reader_workers: Optional[int] = None  # decode processes/threads (None: the CPU count)
    # What each of the member's units asks an executor for (--engine ray places it where these are
    # free; a fraction of a GPU lets units share one). The local engine ignores them.
    unit_cpus: Annotated[float, Gt(0)] = 1.0
    unit_gpus: Annotated[float, Ge(0)] = 1.0
    # Local engine: "member" trains the member's units (its folds, its embeddings pass) in a child
    # process of their own, which ends with them, so the memory TensorFlow/Keras keeps after a
    # model is released goes back to the system before the next member (issue 23: four backbones
    # in one process peaked at 6.6 GB); "none": in the pipeline's own process (a few seconds less
    # per member: no fresh TensorFlow import). --engine ray ignores it.
    isolation: Literal["member", "none"] = "member"
    # Gradient accumulation (issue 23: a member's training memory is mostly the activations its
    # batch holds for the backward pass, about 40 MB an image for densenet201 at 96 px). A fine-tuned
    # member then runs each batch_size batch as batch_size / micro_batch_size micro-batches and
    # steps its optimizer once per batch, on their mean gradient: the optimizer, the learning-rate
    # schedule and the epoch's batches stay those of batch_size, the activations are held for one
    # micro-batch. It must divide batch_size. null: no accumulation (one pass per batch). Exact up
    # to float order when nothing in the model depends on the micro-batch (BatchNorm frozen, as in
    # a pretrained trunk, no dropout or augmentation draws); a trunk trained from scratch computes
    # its BatchNorm statistics per micro-batch, and random draws differ, so it is in the member's hash.
    micro_batch_size: Optional[Annotated[int, Ge(1)]] = None


# weights: random -- a random trunk trained the way a pretrained one is (the head first, then the
# top blocks or all, BatchNorm in inference mode). What a rehearsal of a pretrained config runs
# offline (configs/overlays/smoke.yaml): the same phases, layers and memory as the real run, with
# nothing to download; its scores mean nothing.
RANDOM_WEIGHTS = "random"


@dataclass
class MemberConfig:
    name: str = ""
    backbone: str = "tiny_cnn"
    # ---- input: what the trunk sees. [height, width] in pixels (e.g. [320, 224] for portrait
    # photos), one number for a square, null for the backbone's native size. (Older configs'
    # image_size / image_height are read as this: see upgrade_input_size)
    input_size: Optional[tuple[Annotated[int, Ge(16)], ...]] = None
    # "imagenet", a local .h5 / .weights.h5 path, None (random init, trained from scratch), or
    # RANDOM_WEIGHTS (random init trained as a pretrained trunk is: offline rehearsals of a pretrained config)
    weights: Optional[str] = None
    # the band of the photo the member sees, [top, bottom] as fractions of its height (e.g. [0, 0.5]
    # the upper body, [0.5, 1] the lower): the band fills input_size, so it is a zoom. Members that
    # look at different regions see small items (sunglasses, watches, shoes) at a larger scale and
    # make different errors, which is what a stacker can combine. null: the whole photo
    region: Optional[tuple[Annotated[float, Interval(ge=0, le=1)], ...]] = None
    # "finetune" (two phases), "frozen" (embeddings once, heads per fold) or "probe" (per-label
    # logistic regression on other frozen members' embeddings; see probe_of)
    mode: Literal["finetune", "frozen", "probe"] = "finetune"
    resize: ResizePolicy = "pad"
    # how the feature map becomes label scores, a head plug-in (models.poolings.POOLINGS) with its own
    # settings: avg, max, bands {bands}, csra {lam, temperature}
    pooling: PluginSpec = field(default_factory=lambda: plugin("avg"))
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.2
    hidden_units: Annotated[int, Ge(0)] = 0
    # a loss plug-in (models.losses.LOSSES) with its own settings: bce, focal {gamma},
    # asymmetric {gamma_pos, gamma_neg, clip}
    loss: PluginSpec = field(default_factory=lambda: plugin("bce"))
    batch_size: Annotated[int, Ge(1)] = 32
    head_epochs: Annotated[int, Ge(0)] = 2  # phase 1: frozen backbone
    finetune_epochs: Annotated[int, Ge(0)] = 4  # phase 2: top blocks unfrozen (all epochs when the backbone is from scratch)
    frozen_epochs: Annotated[int, Ge(0)] = 20  # mode "frozen": epochs of the head on cached embeddings (cheap)
    learning_rate: Annotated[float, Gt(0)] = 1e-3
    finetune_learning_rate: Annotated[float, Gt(0)] = 1e-4
    unfreeze: Literal["top", "all"] = "top"
    # "fixed": every configured epoch. "inner_split": epochs chosen on an inner split of the
    # training folds (never the held-out fold): the epoch with the lowest inner loss is kept and
    # training stops `patience` epochs after it; the chosen epoch is recorded per fold
    epoch_selection: Literal["fixed", "inner_split"] = "fixed"
    inner_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2
    patience: Annotated[int, Ge(1)] = 3
    augment: bool = True
    tta_flip: bool = False
    # ---- Fine-tuning recipe (issue 21; defaults keep the two-phase recipe, configs/ccp.yaml
    # states what was measured). head_init "embeddings": linear probing, then fine-tuning (LP-FT,
    # Kumar et al. 2022): the head first trains on cached trunk embeddings of the unit's training
    # images for frozen_epochs at learning_rate (one trunk pass instead of head_epochs augmented
    # ones), so the trunk's fine-tuning starts from a fitted head instead of an underfit one that
    # would push large gradients into it. "train": head_epochs on images with the trunk frozen.
    head_init: Literal["train", "embeddings"] = "train"
    # fine-tuning phase: the learning rate rises linearly from 0 over this fraction of its steps,
    # then decays by a cosine (a fresh Adam's first steps are its largest relative updates)
    warmup_fraction: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    # layer-wise learning rates in the fine-tuning phase: trunk layer at relative depth d (0 first,
    # 1 last) learns at finetune_learning_rate * trunk_lr_floor ** (1 - d); the head at the full
    # rate. 1.0: one rate for all (early blocks hold generic edges and colours worth keeping)
    trunk_lr_floor: Annotated[float, Interval(gt=0, le=1)] = 1.0
    # exponential moving average of the weights during fine-tuning (0: off); the average, not the
    # last step's weights, is the unit's model (Polyak averaging: smoother than any single step)
    ema_decay: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    # test-time augmentation over scales: each extra scale s > 1 predicts on a centred crop of
    # 1/s of each side, resized back; the mean over scales (and mirrors, with tta_flip)
    tta_scales: list[Annotated[float, Interval(ge=1, le=2)]] = field(default_factory=lambda: [1.0])
    # mode "probe": frozen embeddings of the named frozen members (same config; concatenated,
    # flip-averaged when they have tta_flip, standardised) -> one logistic regression per label
    # (scikit-learn), C chosen among probe_c by an inner probe_inner_folds-fold CV on the training
    # rows only (lowest mean log loss). The embeddings are those members' own caches: no extra trunk pass
    probe_of: list[str] = field(default_factory=list)
    probe_c: Annotated[list[Annotated[float, Gt(0)]], MinLen(1)] = field(default_factory=lambda: [0.0003, 0.001, 0.003])
    probe_inner_folds: Annotated[int, Ge(2)] = 3
    # how the member runs (precision, devices, checkpoints, image cache, reader, resources per
    # unit): finished folds stay finished when it changes, but for precision and lr_scaling, which
    # change the numbers (models.stage.member_hash)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    seed: int = 0

    def __post_init__(self):
        # code that builds a member by hand may write input_size=64 or [320, 224]: one form, (h, w)
        self.input_size = input_size_pair(self.input_size)
        if self.region is not None:
            self.region = tuple(float(edge) for edge in self.region)


@dataclass
class StackConfig:
    # each a stacker plug-in (ensemble.stackers.STACKERS), a bare name or {name, params}; the
    # stacker class declares its settings and their defaults. `stack.<stacker>: {settings}` is
    # also read (the older spelling, and the short one for --set stack.xgboost.n_estimators=150):
    # it is merged over that stacker's params
    stackers: Annotated[list[PluginSpec], MinLen(1)] = field(default_factory=lambda: [
        plugin(name) for name in ("mean", "weighted", "linear", "xgboost", "xgboost_long", "grid_cnn")])


@dataclass
class DecisionConfig:
    metric: MetricName = "micro"
    min_labels: Annotated[int, Ge(1)] = 1
    max_labels: Annotated[int, Ge(1)] = MAX_LABELS
    # each a decision-rule plug-in (ensemble.decision.RULES), a bare name or {name, params} (e.g.
    # {name: per_label, params: {shrinkage: 20}}); metric, min_labels and max_labels above are
    # every rule's. `decision.<rule>: {settings}` is read as for stackers
    rules: Annotated[list[PluginSpec], MinLen(1)] = field(default_factory=lambda: [
        plugin(name) for name in ("global", "per_label", "expected_f1", "gfm", "group", "topk")])
    # the chosen (source, rule)'s honest score: the whole choice repeated without each scored fold
    # (needs 3+ folds; about (k - 1) / 2 times the nested CV's rule fits on top)
    outer_loop: bool = True


@dataclass
class AblationConfig:
    bootstrap: Annotated[int, Ge(0)] = 1000
    seed: int = 0
    # the stacker refitted per member subset: "mean" (cheap: no fitting, so the subsets compare the
    # members themselves), another stacker's name, or "chosen" (the decide stage's chosen stacker,
    # refitted for every subset x fold: on the stand-in 5 times the stack stage's time)
    stacker: str = "mean"
    # member subsets refitted at a time, each in a worker process of its own, by a stacker that fits
    # label by label (linear, xgboost: their fits spend their time in Python holding the GIL, so
    # their label threads do not share the cores); 1: in this process, one after another. The
    # averages and grid_cnn always run here. Every subset's result is the same either way.
    workers: Annotated[int, Ge(1)] = 2
    # named groups of members, each also left out as a whole ("without group head_feet"): members
    # that overlap (a view's frozen head and its probe; views of the same region) can each be
    # within noise alone and still add together
    groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TensorBoardConfig:
    """TensorBoard logs of every (member, fold) fit under members/<m>/<unit>/tensorboard/
    (models.tensorboard_logs); view them with `tensorboard --logdir runs/<run>`."""
    enabled: bool = False
    every_n_batches: int = 0  # 0: one point per epoch; N > 0: also the running loss every N training batches


@dataclass
class KaggleConfig:
    """The opt-in kaggle_submit stage (submissions.kaggle): where to submit and where to log the score."""
    competition: Optional[str] = None  # the competition's slug; kaggle_submit refuses to run without one
    # {run} {source} {rule} {metric} {cv_score} are filled in; the public score comes back on its own
    message: str = "fashion-stack {run}: {source} + {rule}, CV {metric}-F1 {cv_score:.4f}"
    leaderboard_log: str = "../leaderboard.csv"  # relative to the run directory: runs beside it share one log
    wait_for_score_s: float = 600.0  # how long to wait for Kaggle to score the submission (0: do not wait)
    poll_s: float = 15.0


@dataclass
class PipelineConfig:
    name: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    members: list[MemberConfig] = field(default_factory=list)
    stack: StackConfig = field(default_factory=StackConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """A short hash of the named sections, to tell whether an artifact is stale."""
        full = self.to_dict()
        return digest({s: full[s] for s in sections})

    def member(self, name: str) -> MemberConfig:
        for m in self.members:
            if m.name == name:
                return m
        raise ConfigError(f"no member named {name!r}; configured: {[m.name for m in self.members]}")


# ---- loading: the one place where a config is checked ------------------------------------------
# Every value is checked against its field's annotation, generically: dataclasses (sections),
# Optional, Literal (typed choices), list[X] and dict[str, X], int/float/str/bool (an int is a float,
# a bool is not an int), and Annotated range markers from annotated_types (Ge(1), Interval(...),
# MinLen(1)). `choices` names the vocabularies that live in registries above this floor (stacker
# and decision-rule names, backbones): the caller passes them down. Cross-field rules are in
# validate(). No stage starts before all of this has passed.


def _build(cls: type, values: Any, path: str, choices: dict) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {_shown(values)}")
    hints = get_type_hints(cls, include_extras=True)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        where = ", ".join(f"{path}.{k}" if path else str(k) for k in unknown)
        raise ConfigError(f"unknown config key(s): {where}; valid keys here: {sorted(known)}")
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}" if path else name, choices)
              for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str, choices: dict) -> Any:
    """`value` checked (and, where lossless, converted: int -> float) against the annotation `hint`."""
    if get_origin(hint) is Annotated:
        base, *markers = get_args(hint)
        value = _coerce(base, value, path, choices)
        _check_markers(markers, value, path)
        return value
    if hint is PluginSpec:
        return _plugin(value, path, choices)
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, path, choices)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union or origin is UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:  # the first option the value fits, e.g. C: "auto" or a number > 0
            try:
                return _coerce(option, value, path, choices)
            except ConfigError as err:
                errors.append(str(err))
        # a value of the right type but out of range says so; otherwise every option's refusal
        in_range = [e for e in errors if not e.startswith(f"{path}:")]
        if in_range:
            raise ConfigError(in_range[0])
        raise ConfigError(f"{path}: {_shown(value)} fits none of: "
                          + "; ".join(e[len(path) + 2:] for e in errors))
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args and value not in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{path}: {_shown(value)} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list in YAML
        return tuple(_coerce(list[args[0]], list(value) if isinstance(value, tuple) else value, path, choices))
    if origin is list or hint is list:
        if not isinstance(value, list):
            hint_text = f"; write [{value}]" if isinstance(value, str) else ""
            raise ConfigError(f"{path}: expected a list, got {_shown(value)}{hint_text}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]", choices) for i, v in enumerate(value)]
    elif origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_shown(value)}")
        item = args[1] if args else Any
        return {k: _coerce(item, v, f"{path}.{k}", choices) for k, v in value.items()}
    else:
        items = [_scalar(hint, value, path)]
    allowed = choices.get(re.sub(r"\[\d+\]", "", path))
    for position, item_value in enumerate(items):
        if allowed is not None and not isinstance(item_value, PluginSpec) and item_value not in allowed:
            where = f"{path}[{position}]" if origin is list or hint is list else path
            raise ConfigError(f"{where}: {_shown(item_value)} is not one of {', '.join(sorted(allowed))}")
    return items if origin is list or hint is list else items[0]


def _plugin(value: Any, path: str, choices: dict) -> PluginSpec:
    """A bare name or {name, params}; with the plug-in's registry in `choices` (keyed by the
    dotted path without list indices), the name is checked and params checked and completed."""
    if isinstance(value, PluginSpec):
        value = {"name": value.name, "params": value.params}
    if isinstance(value, str):
        name, params = value, {}
    elif isinstance(value, dict):
        if "name" not in value or set(value) - {"name", "params"}:
            raise ConfigError(f"{path}: write a name, or {{name: ..., params: {{...}}}}; got the keys "
                              f"{sorted(map(str, value))}")
        name = _scalar(str, value["name"], f"{path}.name")
        params = {} if value.get("params") is None else value["params"]
        if not isinstance(params, dict):
            raise ConfigError(f"{path}.params: expected a mapping of {name}'s settings, got {_shown(params)}")
    else:
        raise ConfigError(f"{path}: expected a name or {{name: ..., params: {{...}}}}, got {_shown(value)}")
    registry = choices.get(re.sub(r"\[\d+\]", "", path))
    if registry is not None:
        if name not in registry:
            raise ConfigError(f"{path}: {_shown(name)} is not one of {', '.join(sorted(registry))}")
        if isinstance(registry, dict):
            params = check_plugin_params(registry[name], params, f"{path}.params", choices)
    return PluginSpec(name, dict(params))


def check_plugin_params(entry: Any, params: dict, path: str, choices: dict) -> dict:
    """`params` checked against the settings a plug-in class declares (its dataclass fields but
    those in `provided`, core.registry) and completed with their defaults."""
    fields = settable_fields(entry)
    known = {f.name for f in fields}
    unknown = sorted(set(params) - known, key=str)
    if unknown:
        takes = f"its settings: {sorted(known)}" if known else "it takes no settings"
        shared = sorted(set(unknown) & set(getattr(entry, "provided", ())))
        if shared:
            takes += f" ({', '.join(shared)}: set once for every entry, in the section above, not in params)"
        raise ConfigError(f"unknown setting(s) {', '.join(f'{path}.{k}' for k in unknown)}; {takes}")
    hints = get_type_hints(entry, include_extras=True) if fields else {}
    resolved = {}
    for f in fields:
        if f.name in params:
            resolved[f.name] = _coerce(hints[f.name], params[f.name], f"{path}.{f.name}", choices)
        else:
            resolved[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return resolved


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {_shown(value)}")
    return value


def _check_markers(markers, value: Any, path: str) -> None:
    for marker in markers:
        if isinstance(marker, annotated_types.GroupedMetadata):  # Interval(gt=0, le=1) and the like
            _check_markers(list(marker), value, path)
            continue
        min_length = getattr(marker, "min_length", None)
        if min_length is not None and len(value) < min_length:
            raise ConfigError(f"{path} has {len(value)} entries; it needs at least {min_length}")
        for attribute, holds, says in _BOUND_TESTS:
            bound = getattr(marker, attribute, None)
            if bound is not None and not holds(value, bound):
                raise ConfigError(f"{path} is {value!r}; it must be {says} {bound}")


_BOUND_TESTS = (
    ("gt", lambda v, b: v > b, "greater than"), ("ge", lambda v, b: v >= b, "at least"),
    ("lt", lambda v, b: v < b, "less than"), ("le", lambda v, b: v <= b, "at most"),
)


def _shown(value: Any) -> str:
    kind = "the string" if isinstance(value, str) else type(value).__name__
    return f"{kind} {value!r}" if not isinstance(value, (dict, list)) else f"a {kind}"


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict:
    """`a.b.c=value` (value parsed as YAML) -> nested dict. A value that does not parse is a
    one-line ConfigError."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = [part.strip() for part in dotted.split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: the key {dotted!r} has an empty part; write e.g. folds.k=5")
    try:
        value = yaml.safe_load(raw) if raw else None
    except RecursionError:
        raise ConfigError(f"--set {dotted}=...: the value is nested too deeply") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value {raw!r} is not valid YAML ({problem}); "
                          "lists look like [a, b], strings with special characters need quotes") from None
    for part in reversed(parts):
        value = {part: value}
    return value


# ---- config files: shipped configs by name, `base:` overlays, `member_defaults` --------------


def config_path(name: str | Path) -> Path:
    """A config file: an existing path, else a config shipped with the package, by name (`ccp`,
    `ccp.yaml` or `configs/ccp.yaml`), so the README's commands also work from an installed copy."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")):
        for candidate in (CONFIGS_DIR / path.name, CONFIGS_DIR / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config {name} not found; give a YAML file, or the name of a shipped config: "
                      f"{', '.join(shipped_configs())}")


def shipped_configs() -> list:
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.yaml"))


def read_config_file(path: Path, _chain: tuple = ()) -> dict:
    """The YAML mapping at `path`. With `base: OTHER.yaml` (beside this file, or a shipped
    config's name) it is an overlay: OTHER's mapping with this one merged over it (nested
    sections key by key; a list, such as members, replaces the base's list whole)."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply to be a config") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"config {path}: base must be a file name, got {base!r}")
    beside = Path(path).parent / base
    base_path = beside if beside.is_file() else config_path(base)
    chain = _chain + (Path(path).resolve(),)
    if base_path.resolve() in chain:
        raise ConfigError(f"config {path}: base {base} leads back to itself ({' -> '.join(map(str, chain))})")
    return _merge(read_config_file(base_path, chain), values)


# (section, list key): the plug-in lists whose entries may also be set as `section.<name>: {...}`
PLUGIN_SECTIONS = (("stack", "stackers"), ("decision", "rules"))


def apply_plugin_sections(values: dict, choices: dict) -> dict:
    """`stack.xgboost: {n_estimators: 150}` (and `decision.per_label: {...}`) merged over the params
    of the listed entry of that name: the spelling older configs use and the one `--set` can
    reach (`--set stack.xgboost.n_estimators=150`). Checked under the key as written; settings of
    a registered plug-in that is not listed are checked and otherwise unused."""
    values = dict(values)
    for section, list_key in PLUGIN_SECTIONS:
        block = values.get(section)
        if not isinstance(block, dict):
            continue
        known = {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}
        named = {k: v for k, v in block.items() if k not in known}
        if not named:
            continue
        registry = choices.get(f"{section}.{list_key}")
        for name, settings in named.items():
            if registry is not None and name not in registry:
                raise ConfigError(f"unknown config key(s): {section}.{name}; valid keys here: {sorted(known)} "
                                  f"and a {list_key[:-1]}'s name ({', '.join(sorted(registry))})")
            if not isinstance(settings, dict):
                raise ConfigError(f"{section}.{name}: expected a mapping of {name}'s settings, got {_shown(settings)}")
            if isinstance(registry, dict):
                check_plugin_params(registry[name], settings, f"{section}.{name}", choices)
        default = [dataclasses.asdict(spec) for spec in getattr(_SECTION_TYPES[section](), list_key)]
        entries = block.get(list_key, default)
        if isinstance(entries, list):
            entries = [_merged_entry(entry, named) for entry in entries]
        values[section] = {**{k: v for k, v in block.items() if k in known}, list_key: entries}
    return values


def _merged_entry(entry, named: dict):
    name = entry if isinstance(entry, str) else entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or name not in named:
        return entry
    params = entry.get("params") if isinstance(entry, dict) else None
    return {"name": name, "params": {**(params if isinstance(params, dict) else {}), **named[name]}}


# member settings that became a plug-in's own params: old key -> (field, plug-in, its setting).
# An old key moves into the plug-in's params when the member uses that plug-in; otherwise it had
# no effect and is dropped
MOVED_MEMBER_KEYS = {
    "focal_gamma": ("loss", "focal", "gamma"), "asl_gamma_pos": ("loss", "asymmetric", "gamma_pos"),
    "asl_gamma_neg": ("loss", "asymmetric", "gamma_neg"), "asl_clip": ("loss", "asymmetric", "clip"),
    "csra_lambda": ("pooling", "csra", "lam"), "csra_temperature": ("pooling", "csra", "temperature"),
    "pooling_bands": ("pooling", "bands", "bands"),
}


OLD_INPUT_KEYS = ("image_size", "image_height")  # the input's older spelling: image_size the width


def upgrade_input_size(member, base=None):
    """A member's input in its one form, `input_size: [height, width]`: one number becomes a
    square, and the older keys become it (image_size the width, and the height too unless
    image_height is set). `base`: the settings these are merged over (a --set or an overlay's
    every_member over a member), whose input a lone image_size or image_height changes one side of."""
    if not isinstance(member, dict):
        return member
    member = dict(member)
    if "input_size" in member:
        if set(member) & set(OLD_INPUT_KEYS):
            raise ConfigError(f"input_size and {', '.join(k for k in OLD_INPUT_KEYS if k in member)} are both set; "
                              "image_size / image_height are input_size's older spelling: keep input_size "
                              "([height, width]) alone")
        member["input_size"] = input_size_pair(member["input_size"])
        return member
    if not set(member) & set(OLD_INPUT_KEYS):
        return member
    before = _input_sides(base) if isinstance(base, dict) else None
    has_width, has_height = "image_size" in member, "image_height" in member
    width, height = member.pop("image_size", None), member.pop("image_height", None)
    if not has_width:  # image_height alone changes the height of the input it is merged over
        width = before[1] if before else None
    if not has_height:  # image_size alone: the width, and the height unless the input was not square
        height = before[0] if before and before[0] != before[1] else width
    elif height is None:  # image_height null: square
        height = width
    if width is None and height is not None:
        raise ConfigError(f"image_height {height} without image_size: the width is the backbone's native one, "
                          f"which the config cannot know; write input_size: [{height}, WIDTH]")
    member["input_size"] = None if width is None else [height, width]
    return member


def _input_sides(settings: dict):
    """(height, width) of settings in either spelling, leniently (a side may be None), or None."""
    if "input_size" in settings:
        pair = input_size_pair(settings["input_size"])
        return pair if isinstance(pair, tuple) and len(pair) == 2 else None
    if not set(settings) & set(OLD_INPUT_KEYS):
        return None
    width = settings.get("image_size")
    return (settings["image_height"] if "image_height" in settings else width), width


HARDWARE_KEYS = tuple(f.name for f in dataclasses.fields(HardwareConfig))  # flat member keys in older configs


def upgrade_hardware(member):
    """A member's run settings under `hardware:` (HardwareConfig): older configs wrote them flat
    on the member. The same key both flat and under hardware is a one-line ConfigError."""
    if not isinstance(member, dict) or not set(member) & set(HARDWARE_KEYS):
        return member
    member = dict(member)
    hardware = member.get("hardware")
    if hardware is None:
        hardware = {}
    if not isinstance(hardware, dict):
        return member  # _build names hardware's wrong type
    both = [k for k in HARDWARE_KEYS if k in member and k in hardware]
    if both:
        raise ConfigError(f"{both[0]} is set both flat and under hardware ({both[0]} and hardware.{both[0]}); "
                          f"it belongs to the member's hardware section: keep hardware.{both[0]} alone")
    member["hardware"] = {**hardware, **{k: member.pop(k) for k in HARDWARE_KEYS if k in member}}
    return member


def _member_over_defaults(defaults: dict, member: dict) -> dict:
    """member_defaults under one member; a member that sets its input (either spelling) sets it
    over the defaults' input, side by side as the older keys always did. Run settings in either
    spelling merge key by key under hardware."""
    defaults, member = upgrade_hardware(defaults), upgrade_hardware(member)
    if not set(member) & {"input_size", *OLD_INPUT_KEYS}:
        return _merge(defaults, member)
    rest = {k: v for k, v in defaults.items() if k not in ("input_size", *OLD_INPUT_KEYS)}
    return _merge(rest, upgrade_input_size(member, defaults))


def upgrade_member(member):
    """A member's settings in the current form: MOVED_MEMBER_KEYS folded into their plug-in, the
    input as input_size (upgrade_input_size), run settings under hardware (upgrade_hardware)."""
    member = upgrade_hardware(upgrade_input_size(member))
    if not isinstance(member, dict) or not set(member) & set(MOVED_MEMBER_KEYS):
        return member
    member = dict(member)
    for old in [k for k in member if k in MOVED_MEMBER_KEYS]:
        value = member.pop(old)
        field_name, plugin_name, setting = MOVED_MEMBER_KEYS[old]
        default = {"loss": "bce", "pooling": "avg"}[field_name]
        spec = member.get(field_name, default)
        if isinstance(spec, str):
            spec = {"name": spec, "params": {}}
        if isinstance(spec, dict) and spec.get("name") == plugin_name:
            params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
            member[field_name] = {**spec, "params": {setting: value, **params}}
    return member


def _shared_member_settings(values: dict, key: str, choices: dict) -> dict:
    """`values[key]` (member_defaults or every_member) popped and checked as member settings on
    their own, so that their typos are named as theirs: a mapping, without a name."""
    shared = values.pop(key, None) or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{key}: expected a mapping of member settings, got {_shown(shared)}")
    if "name" in shared:
        raise ConfigError(f"{key}.name: every member names itself; remove name from {key}")
    _build(MemberConfig, upgrade_member(shared), key, choices)
    return shared


def apply_member_defaults(values: dict, choices: dict) -> dict:
    """`member_defaults` (any member setting but its name) merged under every entry of `members`:
    settings the members share are written once; a member's own value wins."""
    values = dict(values)
    defaults = _shared_member_settings(values, "member_defaults", choices)
    members = values.get("members")
    if defaults and isinstance(members, list):  # a member's own input (either spelling) wins over the defaults'
        members = [_member_over_defaults(defaults, m) if isinstance(m, dict) else m for m in members]
    if isinstance(members, list):
        values["members"] = [upgrade_member(m) for m in members]
    return values


def merge_override(values: dict, override: dict) -> dict:
    """`override` merged over `values`, where `members: {NAME: {...}}` (or `{INDEX: {...}}`) changes
    one member by its name or position: `--set members.densenet201.batch_size=16`. A list (a
    whole `members: [...]`) replaces the list, as in a config file."""
    if isinstance(override, dict) and "every_member" in override:
        # applied now, so a later --set (members.NAME.key=...) still wins over an overlay's forcing
        override = dict(override)
        values = apply_every_member({**values, "every_member": override.pop("every_member")}, {})
    if isinstance(override, dict) and isinstance(override.get("member_defaults"), dict) \
            and isinstance(values.get("member_defaults"), dict):  # --set member_defaults.image_size=...
        values = {**values, "member_defaults": _member_over_defaults(values["member_defaults"],
                                                                     override["member_defaults"])}
        override = {k: v for k, v in override.items() if k != "member_defaults"}
    members = override.get("members") if isinstance(override, dict) else None
    if not isinstance(members, dict):
        return _merge(values, override)
    current = values.get("members")
    if not isinstance(current, list):
        raise ConfigError(f"members.{next(iter(members), '')}: the config has no members list to change by name")
    current = list(current)
    names = [m.get("name") if isinstance(m, dict) else None for m in current]
    if not all(isinstance(change, dict) for change in members.values()):  # a member written without [ ]
        raise ConfigError("members: expected a list, got a dict; write members=[{name: ..., ...}] for the whole "
                          "list, or members.NAME.KEY=VALUE to change one member")
    for key, change in members.items():
        if str(key) in names:
            position = names.index(str(key))
        elif isinstance(key, int) or str(key).isdigit():
            position = int(key)
            if position >= len(current):
                raise ConfigError(f"members.{key}: there are {len(current)} members (0..{len(current) - 1})")
        else:
            raise ConfigError(f"members.{key}: no member named {key!r}; configured: {', '.join(map(str, names))}")
        if not isinstance(change, dict):
            raise ConfigError(f"members.{key}: give a member setting, e.g. members.{key}.batch_size=16")
        current[position] = _member_over_defaults(current[position], change)
    rest = {k: v for k, v in override.items() if k != "members"}
    return _merge({**values, "members": current}, rest)


def apply_every_member(values: dict, choices: dict) -> dict:
    """`every_member` (any member setting but its name) merged OVER every member: what a rehearsal
    overlay (configs/overlays/smoke.yaml) forces on whatever members a config has. The opposite
    of member_defaults, where the member's own value wins. One exception: a forced `weights:
    random` replaces pretrained weights only; a member trained from scratch (weights null) stays
    so, or the rehearsal would train it down a path the real run never takes."""
    values = dict(values)
    forced = _shared_member_settings(values, "every_member", choices)
    if forced and isinstance(values.get("members"), list):
        defaults = values.get("member_defaults") if isinstance(values.get("member_defaults"), dict) else {}
        values["members"] = [upgrade_member(_member_over_defaults(upgrade_member(m), _forced_on(m, defaults, forced)))
                             if isinstance(m, dict) else m for m in values["members"]]
    return values


def _forced_on(member: dict, defaults: dict, forced: dict) -> dict:
    """`forced` as it applies to `member`, whose weights may come from member_defaults."""
    weights = member["weights"] if "weights" in member else defaults.get("weights")
    if forced.get("weights") == RANDOM_WEIGHTS and weights is None:
        return {k: v for k, v in forced.items() if k != "weights"}
    return forced


OVERLAYS_DIR = Path(__file__).resolve().parent.parent / "configs" / "overlays"


def overlay_values(name: str | Path) -> dict:
    """An overlay (`--overlay smoke`): a partial config merged over the config, before --set. A
    shipped overlay by name (configs/overlays/<name>.yaml) or a YAML file."""
    path = Path(name).expanduser()
    if not path.is_file():
        path = OVERLAYS_DIR / f"{Path(str(name)).stem}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in OVERLAYS_DIR.glob("*.yaml"))
        raise ConfigError(f"overlay {name} not found; give a YAML file or a shipped overlay: {', '.join(shipped)}")
    return read_config_file(path)


def load_config(path: str | Path | None = None, overrides: list[dict] | None = None,
                choices: Optional[dict] = None) -> PipelineConfig:
    """Defaults, then the YAML at `path` (None: the demo config), then each override in order;
    every value checked (types, ranges, typed choices, cross-field rules) before it is returned.
    `choices`: {"stack.stackers": names, "decision.rules": names, "members.backbone": names, ...},
    vocabularies from registries on higher floors (keys are dotted paths without list indices)."""
    path = config_path(path) if path is not None else DEFAULT_CONFIG
    values = read_config_file(path)
    try:
        for override in overrides or []:
            values = merge_override(values, override)
        choices = {k: v if isinstance(v, dict) else set(v) for k, v in (choices or {}).items()}
        values = apply_plugin_sections(values, choices)
        values = apply_member_defaults(values, choices)
        values = apply_every_member(values, choices)
        config = _build(PipelineConfig, values, "", choices)
        validate(config)
        check_member_inputs(config, choices.get(BACKBONE_MIN_SIZES))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return config


# The competition's (and submissions.validate's) most labels per image: core.metrics.MAX_LABELS
COMPETITION_MAX_LABELS = MAX_LABELS


def validate(config: PipelineConfig) -> None:
    """Cross-field checks that a single annotation cannot express."""
    from fashion_stack.core.names import name_problem  # names become folders: one rule (core.names)
    for where, name in [("name", config.name)] + [(f"members[{i}].name", m.name) for i, m in enumerate(config.members)]:
        if name_problem(name):
            raise ConfigError(f"{where} {name!r} {name_problem(name)}")
    names = [m.name for m in config.members]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ConfigError(f"members need unique, non-empty names; got {names}")
    # a group's members are not checked against the config's here: an overlay that replaces the
    # members list inherits the groups; the ablate stage lists the names its stack lacks
    for group, members in config.ablation.groups.items():
        if not members:
            raise ConfigError(f"ablation.groups.{group} is empty; list some of the config's members: {names}")
    for key in ("min_labels", "max_labels"):
        value = getattr(config.decision, key)
        if value > COMPETITION_MAX_LABELS:
            raise ConfigError(f"decision.{key} is {value}; the competition accepts at most {COMPETITION_MAX_LABELS} "
                              f"labels per image (its validator refuses more), so it must be at most "
                              f"{COMPETITION_MAX_LABELS}")
    for section, list_key in PLUGIN_SECTIONS:
        listed = [as_plugin_spec(spec).name for spec in getattr(getattr(config, section), list_key)]
        twice = sorted({n for n in listed if listed.count(n) > 1})
        if twice:
            raise ConfigError(f"{section}.{list_key} lists {', '.join(twice)} more than once; each name is one "
                              "unit of the run (its folder), list it once")
    for position, member in enumerate(config.members):
        epochs = (member.frozen_epochs if member.mode == "frozen" else member.head_epochs + member.finetune_epochs)
        if member.mode != "probe" and epochs < 1:
            fields = "frozen_epochs" if member.mode == "frozen" else "head_epochs + finetune_epochs"
            raise ConfigError(f"members[{position}] ({member.name}): {fields} is {epochs}; a member needs at "
                              "least one training epoch")
    by_name = {m.name: m for m in config.members}
    for position, member in enumerate(config.members):
        if member.mode == "probe":
            if not member.probe_of:
                raise ConfigError(f"members[{position}] ({member.name}): mode probe needs probe_of, the names of "
                                  f"frozen members whose embeddings it reads (members: {names})")
            for name in member.probe_of:
                if by_name.get(name) is None or by_name[name].mode != "frozen":
                    raise ConfigError(f"members[{position}] ({member.name}).probe_of: {name!r} is not a frozen "
                                      f"member of this config; frozen members: "
                                      f"{[m.name for m in config.members if m.mode == 'frozen']}")
        elif member.probe_of:
            raise ConfigError(f"members[{position}] ({member.name}): probe_of is set but mode is {member.mode!r}; "
                              "set mode: probe or remove probe_of")
        if member.input_size is not None and len(member.input_size) != 2:
            raise ConfigError(f"members[{position}] ({member.name}).input_size is {list(member.input_size)}; write "
                              "[height, width], one number for a square, or null for the backbone's native size")
        if member.region is not None:
            if len(member.region) != 2 or not member.region[0] < member.region[1]:
                raise ConfigError(f"members[{position}] ({member.name}).region is {list(member.region)}; write "
                                  "[top, bottom], fractions of the photo's height with top < bottom (e.g. [0, 0.5])")
            if member.resize != "stretch" or member.mode == "probe":
                raise ConfigError(f"members[{position}] ({member.name}): region needs resize: stretch (the band is "
                                  f"cut from the stretched photo) and a trunk (mode finetune or frozen); it has "
                                  f"resize {member.resize!r}, mode {member.mode!r}")
        micro = member.hardware.micro_batch_size
        if micro is not None and micro != member.batch_size:
            where = f"members[{position}] ({member.name}).hardware.micro_batch_size"
            if member.mode != "finetune":
                raise ConfigError(f"{where} is {micro} but the member's mode is {member.mode!r}: only a fine-tuned "
                                  "member accumulates gradients (its head trains on cached embeddings); remove it")
            if micro > member.batch_size or member.batch_size % micro:
                raise ConfigError(f"{where} is {micro}, which does not divide batch_size {member.batch_size}; "
                                  f"use a divisor of it (e.g. {_largest_divisor_up_to(member.batch_size, micro)}) "
                                  "or null")
            if member.ema_decay > 0:
                raise ConfigError(f"{where} with ema_decay is not supported (Keras updates the weight average at "
                                  "every micro-batch, not once per batch); use one of them")
        if member.ema_decay > 0 and member.epoch_selection == "inner_split":
            raise ConfigError(f"members[{position}] ({member.name}): ema_decay with epoch_selection inner_split "
                              "is not supported (the inner split scores the raw weights); use one of them")
    if config.decision.min_labels > config.decision.max_labels:
        raise ConfigError(f"decision: min_labels {config.decision.min_labels} is above max_labels "
                          f"{config.decision.max_labels}")


def _largest_divisor_up_to(number: int, limit: int) -> int:
    return max(d for d in range(1, min(number, limit) + 1) if number % d == 0)


_SECTION_TYPES = {"stack": StackConfig, "decision": DecisionConfig}


BACKBONE_MIN_SIZES = "members.backbone.min_size"  # choices key: {backbone: smallest input it takes}


def check_member_inputs(config: PipelineConfig, min_sizes: Optional[dict]) -> None:
    """What the members stage would only find out when it reaches a member: an input size below its
    backbone's minimum (the registry's, passed in `choices` as BACKBONE_MIN_SIZES) and a local
    weights file that is not there. Checked only when the caller passes the minimums, i.e. when
    the members stage is about to run."""
    if min_sizes is None:
        return
    for position, member in enumerate(config.members):
        where = f"members[{position}] ({member.name})"
        smallest = min_sizes.get(member.backbone)
        if smallest is not None and member.input_size is not None and min(member.input_size) < smallest:
            raise ConfigError(f"{where}.input_size is {list(member.input_size)}; backbone {member.backbone} takes at "
                              f"least {smallest} per side (set members.{member.name}.input_size={smallest} or more, "
                              "or null for its native size)")
        weights = member.weights
        if weights not in (None, "imagenet", RANDOM_WEIGHTS) and not Path(weights).expanduser().is_file():
            raise ConfigError(f"{where}.weights: file {weights} not found (relative paths start at the working "
                              "directory); give an existing .weights.h5 file, imagenet, null for random init, or "
                              "random for random init trained as a pretrained trunk")


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "configs"  # shipped as package data (the `configs` package)
DEFAULT_CONFIG = CONFIGS_DIR / "demo.yaml"


def cache_root() -> Path:
    """Where generated data (the demo) is cached: .cache/ in a source checkout, else .cache/ in the
    working directory (an installed copy's site-packages is no place to write)."""
    return PROJECT_ROOT / ".cache" if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd() / ".cache"
