"""QONNX export of a trained detector, for FINN and other QONNX tools (`hwconv export --qonnx`).

What the file holds is what `hwconv export` deploys, not the training graph: BN is folded into the
conv weights before their Quant node and the folded bias is the integer bias times s_in * s_w
(models.fold_params), so every Quant node's scale is the engine's. `deployment_copy` builds that
network in PyTorch and checks it is bit-identical to the eval-mode fake-quant model before tracing.

Graph (ONNX opset 13, batch 1, NCHW, input "image" float in [0, 1], outputs "hm", "wh", "reg"):
- `Quant` nodes (domain qonnx.custom_op.general) for every activation and weight quantiser;
- standard Conv / Relu / Concat / Reshape / Transpose (channel shuffle) / Resize (2x nearest);
- the square deformable layer, which is not standard ONNX, as
  * dilation = Clip(Quant(offset conv, scale 1, 8-bit unsigned, HALF_UP), 0, max_dilation): the
    integer dilation map, in QONNX/standard ops;
  * one custom node `DeformConv2dSquare` in domain `hwconv.quant.qonnx` (this module; qonnx imports
    the domain as a Python module, so its executor runs the node with `DeformConv2dSquare` below):
    inputs X (N, C, H, W), D (N, 1, H, W) integer-valued, W (O, C/group, 3, 3); attributes group,
    max_dilation; Y[n, o, y, x] = sum over c in o's group and taps (ky, kx) of
    W[o, c, ky, kx] * X[n, c, y + (ky - 1) * D[n, 0, y, x], x + (kx - 1) * D[n, 0, y, x]],
    reading 0 outside the image (exact: activations have zero-point 0). Followed by its Quant node.
  A tool without the node can still take everything before the first deformable layer (the
  backbone) as a plain QONNX graph.
Only square variants with integer sampling are exported (what the engine runs, plus the dense
`square` ablation); bilinear or 18-offset layers are refused by name.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.custom_op.base import CustomOp

from ..fileio import atomic_write_bytes
from .deform import QuantDeformConv, gather_taps
from .models import CenterNet, CoDeNetHead, ConvBNAct, DeformUp, Head, float_requant, fold_params, unfolded

__all__ = ["DOMAIN", "OP_TYPE", "QONNX_FILE", "DeformConv2dSquare", "compare_qonnx", "deployment_copy",
           "export_qonnx_model", "run_qonnx"]

DOMAIN = "hwconv.quant.qonnx"
OP_TYPE = "DeformConv2dSquare"
QONNX_DOMAIN = "qonnx.custom_op.general"
QONNX_FILE = "model.qonnx.onnx"
OPSET = 13
OUTPUTS = ("hm", "wh", "reg")
_TAP_DY = (-1, -1, -1, 0, 0, 0, 1, 1, 1)  # tap t = 3*ky + kx: the order of a 3x3 kernel's weights
_TAP_DX = (-1, 0, 1, -1, 0, 1, -1, 0, 1)


class QonnxExportError(ValueError):
    """The model cannot be written as QONNX; the message names the layer."""


# ------------------------------------------------------------------ the deformable node, in torch

def deform_square_reference(x: torch.Tensor, dilation: torch.Tensor, weight: torch.Tensor, group: int
                            ) -> torch.Tensor:
    """The node's semantics in torch, computed as QuantDeformConv computes it (same gather, same einsum)."""
    _, _, h, w = x.shape
    ty = torch.tensor(_TAP_DY, dtype=x.dtype).view(1, 9, 1, 1)
    tx = torch.tensor(_TAP_DX, dtype=x.dtype).view(1, 9, 1, 1)
    py = torch.arange(h, dtype=x.dtype).view(1, 1, h, 1) + ty * dilation
    px = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w) + tx * dilation
    taps = gather_taps(x, py, px)  # (N, C, 9, H, W)
    wf = weight.flatten(2)
    if group == 1:
        return torch.einsum("nckhw,ock->nohw", taps, wf)
    return torch.einsum("nckhw,ck->nchw", taps, wf[:, 0])


class _DeformSquareFn(torch.autograd.Function):
    """Traced as one `DeformConv2dSquare` node; computes the reference in eager mode."""

    @staticmethod
    def forward(ctx, x, dilation, weight, group: int, max_dilation: int):  # noqa: ARG004 (ctx unused)
        return deform_square_reference(x, dilation, weight, group)

    @staticmethod
    def symbolic(g, x, dilation, weight, group: int, max_dilation: int):
        return g.op(f"{DOMAIN}::{OP_TYPE}", x, dilation, weight, group_i=group, max_dilation_i=max_dilation)


class _DilationFn(torch.autograd.Function):
    """The integer dilation map: round half up at scale 1, clamp to [0, max_dilation] (DilationQuant)."""

    @staticmethod
    def forward(ctx, raw, max_dilation: int):  # noqa: ARG004
        return torch.clamp(torch.floor(raw + 0.5), 0.0, float(max_dilation))

    @staticmethod
    def symbolic(g, raw, max_dilation: int):
        const = lambda v: g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))  # noqa: E731
        q = g.op(f"{QONNX_DOMAIN}::Quant", raw, const(1.0), const(0.0), const(8.0),
                 rounding_mode_s="HALF_UP", signed_i=0, narrow_i=0)
        return g.op("Clip", q, const(0.0), const(float(max_dilation)))


class _ExportDeform(nn.Module):
    """A square, integer-sampling QuantDeformConv as the exported graph has it (same submodules)."""

    def __init__(self, d: QuantDeformConv, where: str) -> None:
        super().__init__()
        if not d.square or d.sampling != "integer":
            raise QonnxExportError(
                f"{where}: deformable variant {d.variant!r} with {d.sampling!r} sampling has no QONNX form; "
                "export supports the square variants with integer sampling (what the engine runs)")
        self.offset_conv, self.dilation_quant = d.offset_conv, d.dilation_quant
        self.conv = d.dw_conv if d.depthwise else d.conv
        self.dw_quant, self.pw_conv = d.dw_quant, d.pw_conv
        self.group = self.conv.groups
        self.max_dilation = d.max_dilation

    def forward(self, x):
        dilation = _DilationFn.apply(self.offset_conv(x), self.max_dilation)
        weight = self.conv.weight_quant(self.conv.weight)
        weight = weight.value if hasattr(weight, "value") else weight[0]  # QuantTensor, or export's tuple
        y = _DeformSquareFn.apply(x, dilation, weight, self.group, self.max_dilation)
        if self.conv.bias is not None:
            y = y + self.conv.bias.view(1, -1, 1, 1)
        if self.pw_conv is not None:
            y = self.pw_conv(self.dw_quant(y))
        return y


# ------------------------------------------------------------------ deployment network

@torch.no_grad()
def _fold_into(conv: nn.Module, bn: nn.BatchNorm2d | None, s_in: torch.Tensor) -> None:
    """Make `conv` compute what models.fold_params makes the eval model compute, with no BN after it."""
    _, bias, _, _ = fold_params(conv, bn, s_in)
    if bn is not None:  # the BN scale fold_params multiplies into the weights before quantising
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.copy_(conv.weight * a.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)


class _Outputs(nn.Module):
    """The detector with a tuple output (hm, wh, reg), run unfolded: its BN is already in the weights."""

    def __init__(self, net: CenterNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        with unfolded(self.net):
            out = self.net(x)
        return tuple(out[k] for k in OUTPUTS)


@torch.no_grad()
def deployment_copy(model: CenterNet, check_images: torch.Tensor | None = None) -> nn.Module:
    """A copy of `model` (eval, quantised) with BN folded into weights and integer biases in place,
    and deformable layers in their export form; returns a module whose forward gives (hm, wh, reg).

    With `check_images`, verifies the copy reproduces the eval model bit for bit on them."""
    model.eval()
    scales = model.input_scales()  # what each layer's input carries: the scale it folds with
    net = copy.deepcopy(model).eval()
    for name, m in net.named_modules():
        if isinstance(m, ConvBNAct):
            _fold_into(m[0], m[1], scales[name])
            m[1] = nn.Identity()
        elif isinstance(m, DeformUp):
            if m.deform.pw_conv is not None:  # depthwise: the model folds BN into the pointwise conv
                _fold_into(m.deform.pw_conv, m.bn, m.input_scale())
                m.bn = nn.Identity()
            m.deform = _ExportDeform(m.deform, f"{name}.deform")
        elif isinstance(m, (Head, CoDeNetHead)):  # their ConvBNAct items fold in the branch above
            for i in m.bias_convs:
                _fold_into(m[i].conv, None, scales[f"{name}.{i}"])
    deployed = _Outputs(net).eval()
    if check_images is not None:
        with float_requant(model):  # the deployed graph requantises in float, as the old eval path did
            want = model(check_images)
        got = deployed(check_images)
        for k, g in zip(OUTPUTS, got):
            if not torch.equal(want[k], g):
                diff = (want[k] - g).abs().max().item()
                raise QonnxExportError(f"deployment network differs from the fake-quant model on output "
                                       f"{k!r} (max |diff| {diff:g}); the export would not be faithful")
    return deployed


# ------------------------------------------------------------------ export

def export_qonnx_model(model: CenterNet, path: str | Path, *, check_images: torch.Tensor | None = None) -> dict:
    """Write `model` (eval-mode W4A8 CenterNet) as a cleaned-up QONNX file (shapes inferred,
    constants folded, nodes named); returns {"path", "nodes", "op_types"}."""
    import onnx
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    size = model.cfg.input_size
    if check_images is None:
        check_images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    deployed = deployment_copy(model, check_images)
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        raw = export_qonnx(deployed, torch.zeros(1, 3, size, size), export_path=None, dynamo=False,
                           input_names=["image"], output_names=list(OUTPUTS), opset_version=OPSET,
                           custom_opsets={DOMAIN: 1})
    clean = cleanup_model(ModelWrapper(raw))
    # cleanup names the graph's ends global_in/global_out*: give them the program's tensor names back
    clean.rename_tensor(clean.graph.input[0].name, "image")
    for out, name in zip(list(clean.graph.output), OUTPUTS):
        clean.rename_tensor(out.name, name)
    proto = clean.model
    proto.doc_string = (f"hwconv detector config {model.cfg.name} ({model.cfg.variant}, W{model.cfg.weight_bits}A8), "
                        f"deployment graph; custom node {DOMAIN}.{OP_TYPE}: see hwconv/quant/qonnx.py")
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        key = f"{n.domain}.{n.op_type}" if n.domain else n.op_type
        ops[key] = ops.get(key, 0) + 1
    return {"path": str(path), "nodes": len(proto.graph.node), "op_types": dict(sorted(ops.items()))}


# ------------------------------------------------------------------ running it

def run_qonnx(model_or_path: Any, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Outputs {hm, wh, reg} (N, C, H, W) float32 of the QONNX file run by qonnx's executor
    (onnxruntime per standard node, qonnx's Quant and this module's node in numpy)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    wrapper = model_or_path if isinstance(model_or_path, ModelWrapper) else ModelWrapper(str(model_or_path))
    images = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, np.float32)
    outs: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUTS}
    for image in images:
        got = execute_onnx(wrapper, {"image": image[None]})
        for k in OUTPUTS:
            outs[k].append(got[k])
    return {k: np.concatenate(v) for k, v in outs.items()}


@torch.no_grad()
def compare_qonnx(model: CenterNet, qonnx_path: str | Path, images: torch.Tensor) -> dict:
    """QONNX execution vs the PyTorch fake-quant model, compared as output integers (value / scale
    of each output's quantiser): fraction identical and the largest difference in LSBs, per output.

    Both are float32 graphs summing in different orders, so requantisation near-ties can round
    apart (see verify.py): bit-equal on calibrated untrained models, ~97 % identical integers
    (max 3 LSB) on a trained tiny model."""
    from .export import act_scale

    model.eval()
    with float_requant(model):  # QONNX graphs requantise in float: compare like with like
        want = model(images)
    got = run_qonnx(qonnx_path, images)
    stats = {}
    for k in OUTPUTS:
        scale, _ = act_scale(getattr(model, k)[3])
        a = np.round(want[k].double().numpy() / scale).astype(np.int64)
        b = np.round(got[k].astype(np.float64) / scale).astype(np.int64)
        stats[k] = {"identical": float((a == b).mean()), "max_lsb": int(np.abs(a - b).max()),
                    "max_abs": float(np.abs(want[k].numpy() - got[k]).max())}
    total = sum(v.size for v in got.values())
    identical = sum(stats[k]["identical"] * got[k].size for k in OUTPUTS) / total
    return {"identical": identical, "outputs": stats, "images": int(images.shape[0])}


# ------------------------------------------------------------------ the node, for qonnx's executor

class DeformConv2dSquare(CustomOp):
    """qonnx CustomOp: the square deformable 3x3 conv (semantics in the module docstring)."""

    def get_nodeattr_types(self):
        return {"group": ("i", True, 1), "max_dilation": ("i", True, 7)}

    def make_shape_compatible_op(self, model):
        node = self.onnx_node
        # A 3x3 'same' conv with the node's weight has the node's output shape.
        return helper.make_node("Conv", [node.input[0], node.input[2]], [node.output[0]],
                                kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=self.get_nodeattr("group"))

    def infer_node_datatype(self, model):
        model.set_tensor_datatype(self.onnx_node.output[0], DataType["FLOAT32"])

    def execute_node(self, context, graph):
        node = self.onnx_node
        x, dil, w = (np.asarray(context[i]) for i in node.input)
        group = self.get_nodeattr("group")
        max_d = self.get_nodeattr("max_dilation")
        n, c, h, wd = x.shape
        if dil.shape != (n, 1, h, wd) or w.shape[2:] != (3, 3) or c % group:
            raise ValueError(f"{node.name}: shapes X {x.shape}, D {dil.shape}, W {w.shape} do not fit "
                             f"{OP_TYPE} with group={group}")
        d = dil[:, 0].astype(np.int64)
        if d.size and (d.min() < 0 or d.max() > max_d or not np.array_equal(d, dil[:, 0])):
            raise ValueError(f"{node.name}: dilation map outside the integers 0..{max_d}")
        ys, xs = np.arange(h).reshape(1, h, 1), np.arange(wd).reshape(1, 1, wd)
        taps = np.zeros((n, c, 9, h, wd), np.float32)
        bidx = np.arange(n).reshape(n, 1, 1)
        for t, (dy, dx) in enumerate(zip(_TAP_DY, _TAP_DX)):
            py, px = ys + dy * d, xs + dx * d
            inside = (py >= 0) & (py < h) & (px >= 0) & (px < wd)
            sample = x[bidx, :, np.clip(py, 0, h - 1), np.clip(px, 0, wd - 1)]  # (N, H, W, C)
            taps[:, :, t] = np.where(inside[..., None], sample, 0).transpose(0, 3, 1, 2)
        wf = w.reshape(w.shape[0], w.shape[1], 9).astype(np.float32)
        if group == 1:
            y = np.einsum("nckhw,ock->nohw", taps, wf)
        elif group == c and w.shape[0] == c and w.shape[1] == 1:
            y = np.einsum("nckhw,ck->nchw", taps, wf[:, 0])
        else:
            raise ValueError(f"{node.name}: group={group} with W {w.shape}: only dense (1) or depthwise (C)")
        context[node.output[0]] = y.astype(np.float32)

    def verify_node(self):
        msgs = []
        if len(self.onnx_node.input) != 3:
            msgs.append(f"{OP_TYPE} needs 3 inputs (X, D, W), has {len(self.onnx_node.input)}")
        try:
            if self.get_nodeattr("max_dilation") < 1:
                msgs.append("max_dilation must be >= 1")
        except AttributeError as exc:
            msgs.append(str(exc))
        return msgs
