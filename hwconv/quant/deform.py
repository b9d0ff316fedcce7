"""Quantised (modified) deformable 3x3 convolution, in every variant of the CoDeNet ablation.

Variants (stride 1, output the size of the input):

| variant            | offsets per pixel                          | conv                       |
|--------------------|--------------------------------------------|----------------------------|
| `full`             | 18 (dy, dx per tap), 3x3 predictor, free   | dense 3x3                  |
| `bounded`          | 18, Hardtanh to [-max_dilation, max]       | dense 3x3                  |
| `square`           | 1 (dilation s), 1x1 predictor, in [0, max] | dense 3x3                  |
| `depthwise`        | 18, free                                   | depthwise 3x3 + 1x1        |
| `square_depthwise` | 1, in [0, max]                             | depthwise 3x3 + 1x1        |

Tap (ky, kx) of pixel p samples p + (ky-1, kx-1) + (dy, dx) for the 18-offset variants and
p + (ky-1, kx-1) * s for the square ones; samples outside the image are zero.

Sampling: `bilinear` interpolates at fractional positions (CoDeNet's training). `integer` rounds
the positions and gathers, which is what the engine computes; the offset predictor still learns
through a straight-through estimator whose backward pass is the gradient of the bilinear sample at
the unrounded position. In square + integer mode the rounding is the predictor's output quantiser
(`DilationQuant`: scale 1, clamp [0, max_dilation]), so `dilation_quant`'s output is the engine's
dilation map and `square_depthwise` + `integer` trains exactly `hwconv.golden.ops.deform_depthwise`.

Export (square_depthwise, integer): `offset_conv` -> CONV with requant clamp [0, max_dilation] at
scale 1 (`dilation_quant`); `dw_conv` -> DEFORM_DW requantised to `dw_quant`; `pw_conv` -> CONV.
`exact_depthwise` computes those two requantisations exactly as the engine does (integer
accumulators, integer bias, the exported (mult, shift), round half up); the detector's eval path
(models.DeformUp) uses it, with this module's float path as the straight-through gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity
from torch import Tensor

from .quantizers import DilationQuant, Requant, act_quant, act_scale, exact_conv, layer_requant, to_integers, weight_quant

VARIANTS = ("full", "bounded", "square", "depthwise", "square_depthwise")
SAMPLINGS = ("integer", "bilinear")
OFFSET_WEIGHT_BITS = 8  # the predictor is tiny (1 or 18 outputs); 8 bits keep the offsets fine-grained
OFFSET_INIT_STD = 0.01  # times 1/sqrt(fan_in): offsets start ~constant, so the layer starts as a plain conv

# Tap t = 3*ky + kx sits at (ky-1, kx-1) from the centre, the order of a 3x3 kernel's weights.
_TAP_DY = torch.tensor([-1.0, -1, -1, 0, 0, 0, 1, 1, 1]).view(1, 9, 1, 1)
_TAP_DX = torch.tensor([-1.0, 0, 1, -1, 0, 1, -1, 0, 1]).view(1, 9, 1, 1)


def gather_taps(x: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """Samples of x (N, C, H, W) at integer-valued positions py, px (N, T, H, W) -> (N, C, T, H, W).

    Positions outside the image read 0 (the engine's zero padding; exact because activations have
    zero-point 0). Differentiable w.r.t. x only.
    """
    n, c, h, w = x.shape
    inside = (py >= 0) & (py <= h - 1) & (px >= 0) & (px <= w - 1)
    idx = (py.clamp(0, h - 1) * w + px.clamp(0, w - 1)).long()
    idx = torch.where(inside, idx, 0).reshape(n, 1, -1)  # NaN/huge positions: a safe index, masked below
    taps = x.reshape(n, c, h * w).gather(2, idx.expand(n, c, -1))
    taps = torch.where(inside.reshape(n, 1, -1), taps, 0.0)
    return taps.reshape(n, c, *py.shape[1:])


def bilinear_taps(x: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """Bilinear samples at fractional positions, zeros outside (like grid_sample with
    align_corners=True, padding_mode="zeros"). Differentiable w.r.t. x and the positions; exact at
    integer positions (corner weights are exactly 1 and 0)."""
    y0, x0 = py.floor(), px.floor()
    fy, fx = (py - y0).unsqueeze(1), (px - x0).unsqueeze(1)  # weight of the far corner, carries d/dpos
    return ((1 - fy) * ((1 - fx) * gather_taps(x, y0, x0) + fx * gather_taps(x, y0, x0 + 1))
            + fy * ((1 - fx) * gather_taps(x, y0 + 1, x0) + fx * gather_taps(x, y0 + 1, x0 + 1)))


def integer_taps(x: Tensor, py: Tensor, px: Tensor, gy: Tensor, gx: Tensor) -> Tensor:
    """Forward: samples at the integer positions (py, px). Backward: x gets the gradient of the
    integer gather, the positions get the gradient of the bilinear sample at (gy, gx), the unrounded
    positions (straight-through estimator).

    Written as `integer + (b - b.detach())`, never `b + (integer - b).detach()`: in floating point
    the latter is not exactly the integer sample, and the forward value must be bit-exact.
    """
    taps = gather_taps(x, py.detach(), px.detach())
    if not (torch.is_grad_enabled() and (gy.requires_grad or gx.requires_grad)):
        return taps  # inference: the bilinear half only carries gradients, skip it
    b = bilinear_taps(x.detach(), gy, gx)
    return taps + (b - b.detach())


class QuantDeformConv(nn.Module):
    """Quantised deformable 3x3 convolution (see the module docstring for variants and sampling).

    Attributes for export: `offset_conv` (QuantConv2d predicting offsets), `dilation_quant` (square
    variants with integer sampling, else None), `conv` (dense variants, else None), `dw_conv`,
    `dw_quant` and `pw_conv` (depthwise variants, else None), `variant`, `sampling`, `max_dilation`.
    """

    def __init__(self, in_channels: int, out_channels: int, *, variant: str, sampling: str = "integer",
                 weight_bits: int = 4, max_dilation: int = 7, bias: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown deformable variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
        if max_dilation < 1:
            raise ValueError(f"max_dilation={max_dilation}, must be >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.variant, self.sampling, self.max_dilation = variant, sampling, int(max_dilation)
        self.square = variant.startswith("square")
        self.depthwise = variant.endswith("depthwise")

        # Offset predictor: 1x1 -> one dilation per pixel (square), or 3x3 -> 18 offsets.
        k = 1 if self.square else 3
        self.offset_conv = QuantConv2d(in_channels, 1 if self.square else 18, k, padding=k // 2, bias=True,
                                       weight_quant=weight_quant(OFFSET_WEIGHT_BITS))
        nn.init.normal_(self.offset_conv.weight, std=OFFSET_INIT_STD / (in_channels * k * k) ** 0.5)
        # Start as a plain 3x3 conv: dilation 1 (square), or zero offsets. Weights are small but not
        # zero: an all-zero channel gets Brevitas' minimum weight scale (1e-10) and an untrained model
        # would then export a bias beyond int32.
        nn.init.constant_(self.offset_conv.bias, 1.0 if self.square else 0.0)
        self.dilation_quant = (QuantIdentity(act_quant=DilationQuant(self.max_dilation))
                               if self.square and sampling == "integer" else None)

        wq = weight_quant(weight_bits)
        if self.depthwise:
            self.conv = None
            self.dw_conv = QuantConv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False,
                                       weight_quant=wq)
            self.dw_quant = QuantIdentity(act_quant=act_quant(signed=True))  # the engine requantises here
            self.pw_conv = QuantConv2d(in_channels, out_channels, 1, bias=bias, weight_quant=wq)
        else:
            self.conv = QuantConv2d(in_channels, out_channels, 3, padding=1, bias=bias, weight_quant=wq)
            self.dw_conv = self.dw_quant = self.pw_conv = None

    # -- offsets -------------------------------------------------------------------------------
    def _check_hardware_mode(self, what: str) -> None:
        if self.dilation_quant is None:
            raise RuntimeError(f"{what} exists only for square variants with integer sampling "
                               f"(this layer: {self.variant}, {self.sampling})")

    def integer_dilation(self, x: Tensor) -> Tensor:
        """The integer dilation map (N, H, W), int64 in [0, max_dilation]: what the engine's offset
        CONV writes (square variants, integer sampling)."""
        self._check_hardware_mode("an integer dilation map")
        with torch.no_grad():
            return self.dilation_quant(self.offset_conv(x)).squeeze(1).to(torch.int64)

    def _positions(self, x: Tensor, dilation: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Tap positions (N, 9, H, W): (py, px) for the forward value and (gy, gx), the unrounded
        positions whose bilinear gradient drives the offset predictor (the same in bilinear mode).
        `dilation` (N, 1, H, W), square + integer only: the integer dilation map to sample with
        instead of `dilation_quant`'s (the exact path passes the engine's)."""
        _, _, h, w = x.shape
        ty, tx = _TAP_DY.to(x), _TAP_DX.to(x)
        base_y = torch.arange(h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
        base_x = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, 1, w)
        raw = self.offset_conv(x)
        if dilation is not None:
            self._check_hardware_mode("an external dilation map")
        if self.square:
            soft = F.hardtanh(raw, 0.0, float(self.max_dilation))  # (N, 1, H, W)
            if dilation is not None:
                hard = dilation.to(x.dtype)
            else:
                hard = self.dilation_quant(raw) if self.dilation_quant is not None else soft
            gy, gx = base_y + ty * soft, base_x + tx * soft
            py, px = base_y + ty * hard, base_x + tx * hard
        else:
            off = F.hardtanh(raw, -float(self.max_dilation), float(self.max_dilation)) \
                if self.variant == "bounded" else raw
            gy, gx = base_y + ty + off[:, 0::2], base_x + tx + off[:, 1::2]  # channels (dy, dx) per tap
            # Round half up, the contract's rule; the gradient is carried by (gy, gx) instead.
            py, px = ((gy + 0.5).floor(), (gx + 0.5).floor()) if self.sampling == "integer" else (gy, gx)
        return py, px, gy, gx

    def sample(self, x: Tensor, dilation: Tensor | None = None) -> Tensor:
        """The 9 deformable taps of every pixel, (N, C, 9, H, W) (`dilation`: see `_positions`)."""
        py, px, gy, gx = self._positions(x, dilation)
        if self.sampling == "bilinear":
            return bilinear_taps(x, gy, gx)
        return integer_taps(x, py, px, gy, gx)

    # -- convolution ---------------------------------------------------------------------------
    def deform(self, x: Tensor, dilation: Tensor | None = None) -> Tensor:
        """The deformable 3x3 conv: the layer's output for dense variants; for depthwise variants
        the depthwise output before `dw_quant` (the engine's DEFORM_DW accumulator times
        s_in * s_w per channel). `dilation`: see `_positions`."""
        taps = self.sample(x, dilation)
        conv = self.dw_conv if self.depthwise else self.conv
        w = conv.quant_weight().value.flatten(2)  # (O, I/groups, 9): tap order matches `taps`
        if self.depthwise:
            y = torch.einsum("nckhw,ck->nchw", taps, w[:, 0])
        else:
            y = torch.einsum("nckhw,ock->nohw", taps, w)
        if conv.bias is not None:
            y = y + conv.bias.view(1, -1, 1, 1)
        return y

    # -- the engine's arithmetic ------------------------------------------------------------------
    def engine_requants(self, s_in: Tensor, where: str = "deform") -> tuple[Requant, Requant]:
        """(offset CONV, DEFORM_DW) requantisation integers for input scale s_in, as exported:
        the offset predictor to `dilation_quant` (scale 1) clamped to [0, max_dilation], the
        depthwise conv to `dw_quant`. Square_depthwise with integer sampling only."""
        if self.variant != "square_depthwise" or self.sampling != "integer":
            raise RuntimeError(f"{where}: only square_depthwise with integer sampling is an engine op "
                               f"(this layer: {self.variant}, {self.sampling})")
        _, off = layer_requant(self.offset_conv, None, s_in, *act_scale(self.dilation_quant),
                               clamp=(0, self.max_dilation), where=f"{where}.offset")
        _, dw = layer_requant(self.dw_conv, None, s_in, *act_scale(self.dw_quant), where=f"{where}.deform")
        return off, dw

    @staticmethod
    def deform_depthwise_acc(x_int: Tensor, dilation: Tensor, weight: Tensor) -> Tensor:
        """The DEFORM_DW accumulators (int64, NCHW) of `golden.ops.deform_depthwise`: integer
        activations x_int (N, C, H, W), dilation map (N, 1, H, W) in [0, max_dilation], integer
        weights (C, 1, 3, 3); float64 sums of 9 integer products, exact."""
        _, _, h, w = x_int.shape
        xd = x_int.to(torch.float64)
        d = dilation.to(torch.float64)
        py = torch.arange(h, dtype=torch.float64, device=xd.device).view(1, 1, h, 1) + _TAP_DY.to(xd) * d
        px = torch.arange(w, dtype=torch.float64, device=xd.device).view(1, 1, 1, w) + _TAP_DX.to(xd) * d
        taps = gather_taps(xd, py, px)  # (N, C, 9, H, W), zeros outside the image
        return torch.einsum("nckhw,ck->nchw", taps, weight.to(torch.float64).flatten(1)).to(torch.int64)

    def exact_depthwise(self, x: Tensor, s_in: Tensor, where: str = "deform", *, requants=None) -> Tensor:
        """`dw_quant(deform(x))` computed as the engine computes it: the offset CONV on the integer
        activations, requantised to the dilation map; DEFORM_DW with that map, requantised to
        `dw_quant` (both with the exported integers, `engine_requants`). x must be activations at
        scale s_in (a quantiser's output). Returns dw_quant's values; when gradients are needed
        (or in training, where quantisers calibrate), plus the float path's gradient: forward exact,
        backward today's straight-through estimator, evaluated at the exact dilation map.
        `requants`: where the integers come from (default `self.engine_requants`; a float64 copy
        passes its float32 original's, see models.derive_integers_from)."""
        off, dw = (requants or self.engine_requants)(s_in, where)
        x_int = to_integers(x, s_in)
        dil = off.apply(exact_conv(x_int, off, self.offset_conv))  # (N, 1, H, W)
        y = dw.values(dw.apply(self.deform_depthwise_acc(x_int, dil, dw.weight)), x)
        if self.training or torch.is_grad_enabled():
            f = self.dw_quant(self.deform(x, dilation=dil))
            y = y + (f - f.detach())  # exact + 0 forward: the value stays the exact one
        return y

    def forward(self, x: Tensor) -> Tensor:
        y = self.deform(x)
        if self.depthwise:
            y = self.pw_conv(self.dw_quant(y))
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, variant={self.variant!r}, "
                f"sampling={self.sampling!r}, max_dilation={self.max_dilation}")
