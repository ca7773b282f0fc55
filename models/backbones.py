"""Backbone registry: every CNN trunk by name, with its input sizes, preprocessing and top blocks.

Each entry carries its own preprocessing style because the keras.applications trunks were trained
on differently scaled inputs ("tf": [-1, 1]; "caffe": BGR minus the ImageNet mean; "torch": [0, 1]
standardised per channel). A wrong pairing raises nothing and only costs accuracy, so the pairing
lives here, beside the trunk, and models take it from the spec rather than from the caller.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from fashion_stack.core.config import RANDOM_WEIGHTS
from fashion_stack.core.registry import Registry


class BackboneError(ValueError):
    """An unknown backbone name, an input size it cannot take, or weights it cannot load."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    native_size: int  # the size its ImageNet weights were trained at
    min_size: int  # smallest input keras.applications accepts
    preprocess_style: str  # "tf" | "caffe" | "torch"
    top_blocks_after: str  # layers after this one form the "top blocks" that phase 2 unfreezes
    builder: Callable  # (input_shape, weights) -> keras.Model without its classifier (imports Keras when called)

    def preprocess(self, images):
        """Images in 0..255 (RGB, channels last) -> what the trunk expects."""
        from fashion_stack.models.layers import preprocess_images
        return preprocess_images(images, self.preprocess_style)


BACKBONES = Registry("backbone", name_attribute=None)  # name -> BackboneSpec (core.registry)
# how a trunk's ImageNet weights expect their inputs scaled (models.layers has one function per name)
PREPROCESS_STYLES = ("tf", "caffe", "torch", "tf128")
REGION_LAYER = "region"  # the layer that cuts a member's region from the photo (models.layers.region_crop)


def register_backbone(name: str, native_size: int, min_size: int, preprocess_style: str, top_blocks_after: str):
    """Decorator: register `builder(input_shape, weights) -> keras.Model` under `name` in BACKBONES."""
    if preprocess_style not in PREPROCESS_STYLES:
        raise BackboneError(f"backbone {name!r}: preprocess style {preprocess_style!r} is not one of {sorted(PREPROCESS_STYLES)}")

    def decorate(builder: Callable) -> Callable:
        try:
            BACKBONES.add(name, BackboneSpec(name, native_size, min_size, preprocess_style, top_blocks_after, builder))
        except ValueError as err:
            raise BackboneError(str(err)) from None
        return builder

    return decorate


def backbone_names() -> list:
    return sorted(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES.get_entry(name)
    except ValueError as err:
        raise BackboneError(str(err)) from None


def resolve_size(name: str, size: Optional[int]) -> int:
    """One side of the configured input, or the backbone's native size; below its minimum is an error."""
    spec = backbone_spec(name)
    size = spec.native_size if size is None else int(size)
    if size < spec.min_size:
        raise BackboneError(f"backbone {name!r} needs input_size >= {spec.min_size} per side, got {size}; "
                            f"raise the member's input_size (native: {spec.native_size})")
    return size


@dataclass(frozen=True)
class InputSpec:
    """What a member's images look like on their way into the model: resolved once from the
    member config, saved inside the model (its input shape and preprocess layer), and read back
    from the model for prediction, as timm's models carry their pretrained config."""
    height: int  # what the readers decode to
    width: int
    resize: str  # "stretch" | "pad" | "crop"
    preprocess_style: str
    # rows the model cuts off the top and bottom before the trunk (a member's region): the trunk
    # sees (height - crop_top - crop_bottom) x width
    crop_top: int = 0
    crop_bottom: int = 0

    @property
    def trunk_size(self):
        """What the trunk takes, in the readers' form (an int when square)."""
        height = self.height - self.crop_top - self.crop_bottom
        return height if height == self.width else (height, self.width)

    @property
    def size(self):
        """What the readers take: an int when square, else (height, width)."""
        return self.height if self.height == self.width else (self.height, self.width)

    @property
    def shape(self) -> tuple:
        return (self.height, self.width, 3)

    @property
    def size_name(self) -> str:
        """"224" when square, else height x width: "320x224"."""
        return str(self.width) if self.height == self.width else f"{self.height}x{self.width}"


def resolve_input_spec(member) -> InputSpec:
    """The one place a member's input size, resize policy and preprocessing are worked out (once
    per member: models.plan.MemberPlan carries it). `input_size` is (height, width), or None for
    the backbone's native square (non-square inputs: tall photos keep their aspect, e.g. 320 x 224,
    in a fully convolutional trunk)."""
    height, width = member.input_size if member.input_size is not None else (None, None)
    height, width = resolve_size(member.backbone, height), resolve_size(member.backbone, width)
    style = backbone_spec(member.backbone).preprocess_style
    region = getattr(member, "region", None)
    if region is None or tuple(region) == (0.0, 1.0):
        return InputSpec(height, width, member.resize, style)
    # the whole photo is read taller, so that the band [top, bottom] of it is `height` rows
    top, bottom = region
    decoded = int(round(height / (bottom - top)))
    crop_top = min(int(round(top * decoded)), decoded - height)
    return InputSpec(decoded, width, member.resize, style, crop_top, decoded - height - crop_top)


def input_spec_of(model) -> InputSpec:
    """The InputSpec a member or embedding model was built with."""
    try:
        layer = model.get_layer("preprocess")
    except ValueError:
        raise BackboneError(f"model {model.name!r} has no preprocess layer: it is not a member or embedding model") from None
    if layer.resize is None:
        raise BackboneError(f"model {model.name!r} was saved without its resize policy (made by an older "
                            "version); rerun its members stage with --redo members")
    try:
        (crop_top, crop_bottom), _ = model.get_layer(REGION_LAYER).cropping
    except ValueError:
        crop_top = crop_bottom = 0
    return InputSpec(int(model.input_shape[1]), int(model.input_shape[2]), layer.resize, layer.style,
                     int(crop_top), int(crop_bottom))


def create_backbone(name: str, input_size=None, weights: Optional[str] = None):
    """The trunk without its classifier, for `input_size` RGB inputs: an int (square) or
    (height, width); the trunks here are fully convolutional, so any shape above their minimum.

    weights: "imagenet" (Keras downloads them; needs the internet once), a local .h5 /
    .weights.h5 file saved from the same trunk without its top, None (random init, trained from
    scratch) or "random" (random init, trained as a pretrained trunk: see RANDOM_WEIGHTS).
    """
    spec = backbone_spec(name)
    if isinstance(input_size, (tuple, list)):
        shape = (resolve_size(name, input_size[0]), resolve_size(name, input_size[1]), 3)
    else:
        size = resolve_size(name, input_size)
        shape = (size, size, 3)
    if weights == RANDOM_WEIGHTS:
        return spec.builder(shape, None)
    if weights is None or weights == "imagenet":
        try:
            return spec.builder(shape, weights)
        except Exception as err:  # noqa: BLE001 - Keras raises a bare Exception for a failed download
            if weights == "imagenet" and _download_failed(err):
                raise BackboneError(weights_download_message(name, err)) from None
            raise
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(f"weights file {path} for backbone {name!r} not found; give an existing "
                            "local .weights.h5 file, 'imagenet', or null for random init")
    trunk = spec.builder(shape, None)
    try:
        with warnings.catch_warnings():
            # Keras only warns when parts of a file do not match and leaves them random
            warnings.simplefilter("error", UserWarning)
            trunk.load_weights(str(path))
    except (ValueError, OSError, UserWarning) as err:
        raise BackboneError(f"weights file {path} does not fit backbone {name!r} (include_top=False): {err}") from err
    return trunk


def _download_failed(err: BaseException) -> bool:
    import urllib.error
    return isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError)) or "URL fetch failure" in str(err)


def weights_download_message(name: str, err: BaseException) -> str:
    """One line for a failed ImageNet weights download: the backbone, the host, and the three ways
    to run without it (docs/OFFLINE.md)."""
    import re

    from keras.src.backend.config import keras_home
    url = re.search(r"(https?://[^\s:]+(?::\d+)?[^\s:]*)", str(err))
    host = re.match(r"https?://([^/:]+)", url.group(1)).group(1) if url else "the weights host"
    file_name = url.group(1).rstrip("/").rsplit("/", 1)[-1] if url else "the weights file"
    reason = str(err).split(" -- ", 1)[-1].strip() or type(err).__name__
    cache = Path(keras_home()) / "models"
    return (f"backbone {name!r}: downloading its ImageNet weights from {host} failed ({reason}); offline, "
            f"either copy {file_name} into Keras's cache {cache} (KERAS_HOME moves it), or set the member's "
            f"weights to a local .weights.h5 file, or weights: null for random init (random: random init trained "
            f"as pretrained, to rehearse; docs/OFFLINE.md)")


def is_pretrained(weights: Optional[str]) -> bool:
    """Whether the member trains as a pretrained trunk (phases head..top, BatchNorm frozen): with
    ImageNet weights, a weights file or RANDOM_WEIGHTS; from scratch (None) everything trains."""
    return weights is not None


# ---- the registered trunks ---------------------------------------------------------------


def _application(constructor: str):
    """A keras.applications trunk by its constructor's name, looked up when a trunk is built (so
    registering it imports no Keras)."""
    def build(shape, weights):
        import keras
        return getattr(keras.applications, constructor)(include_top=False, weights=weights, input_shape=shape)
    return build


register_backbone("inception_v3", 299, 75, "tf", "mixed8")(_application("InceptionV3"))
register_backbone("resnet50", 224, 32, "caffe", "conv4_block6_out")(_application("ResNet50"))
register_backbone("xception", 299, 71, "tf", "block12_sepconv3_bn")(_application("Xception"))
register_backbone("densenet201", 224, 32, "torch", "pool4_pool")(_application("DenseNet201"))
register_backbone("mobilenet_v2", 224, 32, "tf", "block_15_add")(_application("MobileNetV2"))
# MobileNet V1 (alpha 1.0): plain depthwise-separable stacks, no residuals: a different ImageNet
# trunk from V2 for a stack to combine. Preprocessing as keras.applications.mobilenet's ("tf",
# [-1, 1]); top blocks: the last two separable blocks (12 and 13)
register_backbone("mobilenet", 224, 32, "tf", "conv_pw_11_relu")(_application("MobileNet"))


@register_backbone("tiny_cnn", 64, 16, "tf", "tiny_block3_pool")
def tiny_cnn(shape, weights):
    """Four conv blocks (about 260k parameters with a 228-label head): for tests and the CPU demo,
    no pretrained weights. Measured on the demo (64 px, 30 epochs, validation micro-F1): three
    blocks of 16-32-64 filters 0.41 (the frequency floor), 32-64-128 0.53, these four 0.61."""
    if weights == "imagenet":
        raise BackboneError("tiny_cnn has no ImageNet weights; use weights null or a local file")
    import keras
    from keras import layers
    inputs = keras.Input(shape)
    x = inputs
    for block, filters in enumerate((24, 48, 96, 192), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"tiny_block{block}_conv")(x)
        x = layers.BatchNormalization(name=f"tiny_block{block}_bn")(x)
        x = layers.ReLU(name=f"tiny_block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"tiny_block{block}_pool")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


# ---- modern trunks (keras.applications, 2021-2022) -----------------------------------------


def _application_without_preprocessing(constructor: str):
    """EfficientNetV2 and ConvNeXt scale their inputs inside the trunk by default; here that is the
    ImagePreprocess layer's job, as for every other trunk (one place, saved with the model), so the
    trunk is built without it. Their ImageNet weights load the same: those layers hold no weights."""
    def build(shape, weights):
        import keras
        return getattr(keras.applications, constructor)(include_top=False, weights=weights, input_shape=shape,
                                                        include_preprocessing=False)
    return build


# top blocks: the last stage (EfficientNetV2: block6* and the top conv; ConvNeXt: the last
# downsampling and stage 3), as the last one or two blocks are for the older trunks
register_backbone("efficientnetv2_b0", 224, 32, "torch", "block5e_add")(
    _application_without_preprocessing("EfficientNetV2B0"))
register_backbone("efficientnetv2_s", 384, 32, "tf128", "block5i_add")(
    _application_without_preprocessing("EfficientNetV2S"))
register_backbone("convnext_tiny", 224, 32, "torch", "convnext_tiny_stage_2_block_8_identity")(
    _application_without_preprocessing("ConvNeXtTiny"))
