"""The one registry of detector configurations: every command's model choices come from here.

CoDeNet's configs a-e as its released training code builds them (Zhen-Dong/CoDeNet,
lib/models/networks/shufflenetv2_dcn.py; --w2 and --maxpool select the 2x widths and the
stride-2 stem + maxpool): ShuffleNetV2 stages, `layer4` (1x1 conv + BN + ReLU to 1024, or 2153 at
2x), a decoder of three [1x1 offset conv, depthwise deformable 3x3, 1x1 conv, BN, ReLU, nearest 2x]
blocks 1024 -> 256 -> 128 -> 64, and heads of [1x1 + BN + ReLU, depthwise 3x3 + BN + ReLU, 1x1 with
bias]. `tiny` is the same structure scaled down, small enough to train on a 2-core CPU in minutes.

Plain data, no torch: the CLI builds its argument choices from `MODEL_NAMES` without importing
the quantisation stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Head styles. "codenet": 1x1 + BN + ReLU, depthwise 3x3 + BN + ReLU, 1x1 -> outputs with bias
# (CoDeNet's released heads). "centernet": CenterNet's plain 3x3 conv (bias) + ReLU, 1x1 with bias.
HEAD_STYLES = ("codenet", "centernet")
STEMS = ("s4", "s2pool")


@dataclass(frozen=True)
class DetectorConfig:
    """One detector. The defaults of `layer4` and `head` are the networks hwconv built before it
    followed CoDeNet's code (no layer4, plain CenterNet heads), so a checkpoint saved then, whose
    stored config lacks these fields, rebuilds as the network it was trained as."""

    name: str
    input_size: int
    widths: tuple[int, ...]            # stem, stage2, stage3, stage4
    stem: str = "s4"                   # "s4": 3x3 stride 4; "s2pool": 3x3 stride 2 + 3x3/2 maxpool
    repeats: tuple[int, ...] = (3, 7, 3)  # basic units after each stage's stride-2 unit
    decoder: tuple[int, ...] = (256, 128, 64)
    head_conv: int = 64
    num_classes: int = 20
    variant: str = "square_depthwise"
    sampling: str = "integer"
    max_dilation: int = 7
    weight_bits: int = 4
    stem_weight_bits: int = 8
    layer4: int = 0                    # 1x1 conv + BN + ReLU after stage 4 to this width; 0: none
    head: str = "centernet"            # one of HEAD_STYLES
    published: dict = field(default_factory=dict, compare=False)  # CoDeNet's figures, VOC W4A8

    def __post_init__(self) -> None:
        if self.head not in HEAD_STYLES:
            raise ValueError(f"config {self.name}: head {self.head!r}; expected one of {', '.join(HEAD_STYLES)}")
        if self.stem not in STEMS:
            raise ValueError(f"config {self.name}: stem {self.stem!r}; expected one of {', '.join(STEMS)}")
        if self.layer4 < 0:
            raise ValueError(f"config {self.name}: layer4 width {self.layer4}; expected >= 0 (0: no layer4)")

    def with_(self, **kw) -> "DetectorConfig":
        unknown = sorted(set(kw) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"config {self.name}: unknown option(s) {', '.join(unknown)}")
        return replace(self, **kw)


_W1X = (24, 116, 232, 464)
_W2X = (24, 244, 488, 976)
# CoDeNet Table (VOC, W4A8, Ultra96): GMAC as thop counts in eval mode, MB = parameters x 4 bits / 2^20.
_CODENET = dict(layer4=1024, head="codenet")
_CODENET_2X = dict(layer4=2153, head="codenet")
CONFIGS: dict[str, DetectorConfig] = {
    "a": DetectorConfig("a", 256, _W1X, "s4", **_CODENET,
                        published=dict(gmac=0.29, mbytes=0.76, fps=32.2, ap50=51.1)),
    "b": DetectorConfig("b", 256, _W1X, "s2pool", **_CODENET,
                        published=dict(gmac=0.29, mbytes=0.76, fps=26.9, ap50=55.1)),
    "c": DetectorConfig("c", 512, _W1X, "s4", **_CODENET,
                        published=dict(gmac=1.14, mbytes=0.76, fps=9.3, ap50=61.7)),
    "d": DetectorConfig("d", 512, _W2X, "s4", **_CODENET_2X,
                        published=dict(gmac=3.54, mbytes=2.90, fps=5.2, ap50=67.1)),
    "e": DetectorConfig("e", 512, _W2X, "s2pool", **_CODENET_2X,
                        published=dict(gmac=3.58, mbytes=2.90, fps=4.6, ap50=69.7)),
    # Same structure, scaled down (layer4 at 2x stage 4, a 64 -> 32 -> 32 decoder, 32-wide heads).
    "tiny": DetectorConfig("tiny", 128, (16, 32, 64, 128), "s4", (1, 1, 1), (64, 32, 32), 32, 10,
                           layer4=256, head="codenet"),
}

MODEL_NAMES: tuple[str, ...] = tuple(CONFIGS)
DEFAULT_MODEL = "a"


def get_config(name: str) -> DetectorConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown detector config {name!r}; known: {', '.join(MODEL_NAMES)}") from None
