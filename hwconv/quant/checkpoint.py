"""Training checkpoints: one torch file, readable with `torch.load(weights_only=True)` only.

Everything stored is a tensor or a plain container (dict/list/tuple/str/int/float/bool/None), so
loading never unpickles an arbitrary object: the detector config travels as a plain dict and is
rebuilt with `DetectorConfig(**...)`. Writes are atomic (a crash leaves the previous file).

Brevitas quantiser state. An activation quantiser's scale (`ParameterFromRuntimeStatsScaling`)
is initialised from statistics over its first `collect_stats_steps` training forwards; its
`state_dict` omits `value` before the first forward and stores the running statistic *as* `value`
during collection, and loading a `value` ends collection. A plain state_dict round trip therefore
neither loads into a fresh model strictly nor resumes mid-calibration. The checkpoint stores each
quantiser's raw (counter, buffer, value) beside the state_dict and restores them after loading.

A checkpoint is untrusted input. It must be a regular file of at most CHECKPOINT_MAX_BYTES; the
stored detector config is checked field by field and its size bounded (CONFIG_LIMITS, at most
MAX_MODEL_PARAMS parameters estimated from the widths) before a model is built; every part the
loader uses is type-checked, tensor shapes must match the model and weights must be finite. All
of it fails as CheckpointError (a ValueError) naming the file and the field.

Quantisation mode. "qat": every quantiser on (what the engine computes). "float": activation and
weight quantisers off except the parts that are architecture rather than precision: the dilation
quantiser of square deformable convs (rounds and clamps the offsets the engine uses) and the tap
weights of deformable convs, which `QuantDeformConv.deform` reads through `quant_weight().value`
(a disabled weight quantiser returns a plain tensor there, which has no `.value`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
from brevitas.proxy.parameter_quant import BiasQuantProxyFromInjectorBase, WeightQuantProxyFromInjectorBase
from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase

from hwconv.fileio import InputFileError, atomic_write_bytes, check_regular_file

from .deform import QuantDeformConv
from .models import CONFIGS, CenterNet, DetectorConfig, build_detector, fold_batchnorm

FORMAT = "hwconv-checkpoint"
VERSION = 1
QUANT_MODES = ("float", "qat")
_TUPLE_FIELDS = {f.name for f in dataclasses.fields(DetectorConfig) if "tuple" in str(f.type)}


class CheckpointError(ValueError):
    """A file is not a (compatible) hwconv checkpoint; the message names the file."""


CHECKPOINT_MAX_BYTES = 2 * 1024 ** 3     # config e with optimizer state is ~100 MB
MAX_MODEL_PARAMS = 50_000_000            # CoDeNet config e has ~5.8 M
CONFIG_LIMITS = {                        # (low, high) of every integer a stored config may hold
    "input_size": (32, 2048), "widths": (1, 4096), "repeats": (0, 16), "decoder": (1, 4096),
    "head_conv": (1, 4096), "num_classes": (1, 1000), "max_dilation": (0, 15), "weight_bits": (2, 8),
    "stem_weight_bits": (2, 8), "layer4": (0, 4096),
}
CONFIG_LENGTHS = {"widths": (4, 4), "repeats": (3, 3), "decoder": (1, 6)}


def estimated_params(d: dict[str, Any]) -> int:
    """An upper estimate of a config's parameter count from its widths (ShuffleNetV2 units of 1x1
    and depthwise convs, decoder, heads; about 2.5x the real count), so a config claiming width
    100000 is refused before anything is allocated."""
    w, rep, dec = list(d["widths"]), list(d["repeats"]), list(d["decoder"])
    n = 27 * w[0]
    for i in range(3):
        n += (rep[i] + 1) * (w[i + 1] * w[i + 1] + w[i] * w[i + 1] + 18 * w[i + 1])
    last = w[3]
    if d.get("layer4"):
        n += last * d["layer4"]
        last = d["layer4"]
    for c in dec:
        n += 2 * 9 * last + last * c + 18 * c
        last = c
    n += 3 * (9 * last * d["head_conv"] + d["head_conv"] * (d["num_classes"] + 4))
    return n


def check_config_dict(d: Any, source: str) -> dict[str, Any]:
    """The stored detector config, type- and size-checked before DetectorConfig or a model exists."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: config must be a dict, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(DetectorConfig)}
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        raise CheckpointError(f"{source}: config has unknown field(s) {', '.join(unknown[:5])}")
    for key in ("name", "input_size", "widths"):
        if key not in d:
            raise CheckpointError(f"{source}: config lacks the field {key!r}")
    for key, (lo, hi) in CONFIG_LIMITS.items():
        if key not in d:
            continue
        v = d[key]
        if key in CONFIG_LENGTHS:
            nlo, nhi = CONFIG_LENGTHS[key]
            if not isinstance(v, (list, tuple)) or not nlo <= len(v) <= nhi:
                raise CheckpointError(f"{source}: config.{key} must be a list of {nlo}..{nhi} integers, got "
                                      f"{type(v).__name__}{'' if not isinstance(v, (list, tuple)) else f' of {len(v)}'}")
            items = list(v)
        else:
            items = [v]
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
                raise CheckpointError(f"{source}: config.{key} = {v!r:.80}: must be integer(s) in [{lo}, {hi}]")
    for key in ("name", "stem", "variant", "sampling", "head"):
        if key in d and (not isinstance(d[key], str) or len(d[key]) > 64):
            raise CheckpointError(f"{source}: config.{key} must be a string of at most 64 characters")
    if "published" in d and not isinstance(d["published"], dict):
        raise CheckpointError(f"{source}: config.published must be a dict")
    full = {"repeats": (3, 7, 3), "decoder": (256, 128, 64), "head_conv": 64, "num_classes": 20, "layer4": 0, **d}
    n = estimated_params(full)
    if n > MAX_MODEL_PARAMS:
        raise CheckpointError(f"{source}: config describes a model of about {n:,} parameters, more than the "
                              f"{MAX_MODEL_PARAMS:,} hwconv builds (hwconv.quant.checkpoint.MAX_MODEL_PARAMS)")
    return d


def _check_structure(ckpt: dict[str, Any], path: Path) -> None:
    """Every part the loader reads, with the type it must have (a missing or mistyped part is one
    CheckpointError naming it, never a KeyError/AttributeError from deep inside)."""
    def need(key: str, kind, what: str) -> Any:
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} ({what})")
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path}: checkpoint {key!r} must be {what}, got {type(ckpt[key]).__name__}")
        return ckpt[key]

    check_config_dict(need("config", dict, "the detector config, a dict"), f"{path}")
    need("config_name", str, "a string")
    model = need("model", dict, "the model state_dict")
    for k, v in model.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: model state_dict entry {str(k)[:80]!r} is not a named tensor")
    qs = need("quant_state", dict, "the quantiser state, a dict")
    for name, s in qs.items():
        ok = (isinstance(name, str) and isinstance(s, dict) and isinstance(s.get("counter"), int)
              and isinstance(s.get("buffer"), torch.Tensor) and isinstance(s.get("value"), torch.Tensor))
        if not ok:
            raise CheckpointError(f"{path}: quant_state[{str(name)[:80]!r}] must hold counter (int), buffer and "
                                  "value (tensors)")
    need("quant_mode", str, "a string")
    if "bn_folded" in ckpt and not isinstance(ckpt["bn_folded"], bool):
        raise CheckpointError(f"{path}: checkpoint 'bn_folded' must be true or false")


# ------------------------------------------------------------------ model access

def unwrap(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


# ------------------------------------------------------------------ quantisation mode

def _exempt_from_float(model: nn.Module) -> set[int]:
    """ids of quantiser proxies that stay on in float mode (see the module docstring)."""
    keep: set[int] = set()
    for m in model.modules():
        if isinstance(m, QuantDeformConv):
            if m.dilation_quant is not None:
                keep.update(id(p) for p in m.dilation_quant.modules())
            for conv in (m.dw_conv, m.conv):
                if conv is not None:
                    keep.update(id(p) for p in conv.weight_quant.modules())
    return keep


def _proxies(model: nn.Module) -> list[nn.Module]:
    kinds = (ActQuantProxyFromInjectorBase, WeightQuantProxyFromInjectorBase, BiasQuantProxyFromInjectorBase)
    keep = _exempt_from_float(model)
    return [m for m in model.modules() if isinstance(m, kinds) and id(m) not in keep]


def set_quant_mode(model: nn.Module, mode: str) -> None:
    """Switch a Brevitas model between "float" and "qat" in place (no weights change)."""
    if mode not in QUANT_MODES:
        raise ValueError(f"quantisation mode {mode!r}; valid: {', '.join(QUANT_MODES)}")
    for proxy in _proxies(unwrap(model)):
        proxy.disable_quant = mode == "float"


def get_quant_mode(model: nn.Module) -> str:
    """"float", "qat", or "mixed" when someone toggled quantisers individually."""
    states = {bool(p.disable_quant) for p in _proxies(unwrap(model))}
    if states == {True}:
        return "float"
    return "qat" if states <= {False} else "mixed"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() for inference, restoring the training flag after.

    Eval mode normally runs BN folded into the quantised weights (models.fold_params), which needs
    the scales its activations carry; a float-mode model has none and runs conv -> BN (running
    statistics) unfolded by itself."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def bn_folded(model: nn.Module) -> bool:
    """Whether training runs with BN folded into the quantised weights (models.fold_batchnorm)."""
    return any(getattr(m, "folded", False) for m in unwrap(model).modules())


def quant_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Raw state of every runtime-statistics scale: {module name: {counter, buffer, value}}."""
    return {name: {"counter": int(m.counter), "buffer": m.buffer.detach().clone(),
                   "value": m.value.detach().clone()}
            for name, m in unwrap(model).named_modules() if isinstance(m, ParameterFromRuntimeStatsScaling)}


def restore_quant_state(model: nn.Module, state: dict[str, dict[str, Any]]) -> None:
    modules = dict(unwrap(model).named_modules())
    with torch.no_grad():
        for name, s in state.items():
            m = modules[name]
            m.counter = int(s["counter"])
            m.buffer.copy_(s["buffer"])
            m.value.copy_(s["value"])


def calibration_steps_left(model: nn.Module) -> int:
    """Training forwards until every activation scale has finished collecting statistics."""
    left = [max(0, m.collect_stats_steps + 1 - int(m.counter))
            for m in unwrap(model).modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
    return max(left, default=0)


# ------------------------------------------------------------------ config and rng as plain data

def config_to_dict(cfg: DetectorConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_from_dict(d: dict[str, Any]) -> DetectorConfig:
    return DetectorConfig(**{k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in d.items()})


def config_overrides(cfg: DetectorConfig) -> dict[str, Any]:
    """Fields that differ from the named base config (everything if the name is not in CONFIGS)."""
    mine = config_to_dict(cfg)
    base = config_to_dict(CONFIGS[cfg.name]) if cfg.name in CONFIGS else {}
    return {k: v for k, v in mine.items() if k != "published" and base.get(k) != v}


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = (set(a) | set(b)) - {"published"}
    return [f"{k}: checkpoint {a.get(k)!r} != model {b.get(k)!r}" for k in sorted(keys) if a.get(k) != b.get(k)]


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _plain(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Metrics as JSON-plain data (numpy/torch scalars become floats): weights_only-loadable."""
    def scalar(x: Any) -> Any:
        return x.item() if hasattr(x, "item") else str(x)
    return json.loads(json.dumps(metrics or {}, default=scalar))


# ------------------------------------------------------------------ save / load

def save_checkpoint(path: str | Path, model: nn.Module, *, epoch: int, optimizer: torch.optim.Optimizer | None = None,
                    metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` (a CenterNet, possibly DDP-wrapped) and training state to `path` atomically.

    `epoch` counts completed epochs; `extra` is plain data (e.g. training options and history)."""
    net = unwrap(model)
    if not isinstance(net, CenterNet):
        raise TypeError(f"save_checkpoint expects a CenterNet (from build_detector), got {type(net).__name__}")
    ckpt = {
        "format": FORMAT, "version": VERSION,
        "config_name": net.cfg.name, "config": config_to_dict(net.cfg), "overrides": config_overrides(net.cfg),
        "quant_mode": get_quant_mode(net), "bn_folded": bn_folded(net),
        "model": net.state_dict(), "quant_state": quant_state(net),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch), "metrics": _plain(metrics), "extra": _plain(extra),
        "rng": rng_state(),
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True; CheckpointError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        check_regular_file(path, what="checkpoint", limit=CHECKPOINT_MAX_BYTES)
    except InputFileError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a hwconv checkpoint: it holds objects that safe "
                              f"(weights_only) loading refuses to unpickle ({first})") from None
    except Exception as e:  # not a torch zip/pickle at all: truncated, text, another format
        raise CheckpointError(f"{path} is not a hwconv checkpoint: torch.load cannot read it "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a hwconv checkpoint (a torch file without the "
                              f"'format': {FORMAT!r} marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: hwconv checkpoint version {str(ckpt.get('version'))[:40]!r}, this "
                              f"hwconv reads version {VERSION}")
    _check_structure(ckpt, path)
    return ckpt


def _load_weights(path: Path, net: CenterNet, ckpt: dict[str, Any]) -> None:
    own = net.state_dict()
    for k, v in ckpt["model"].items():
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{path}: weights do not fit the model: {k} has shape {tuple(v.shape)}, the "
                                  f"model's is {tuple(own[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: {k} holds NaN or infinite values")
    modules = dict(net.named_modules())
    for name, s in ckpt["quant_state"].items():
        m = modules.get(name)
        if not isinstance(m, ParameterFromRuntimeStatsScaling):
            raise CheckpointError(f"{path}: quant_state names {name[:80]!r}, not a quantiser scale of this model")
        for part in ("buffer", "value"):
            if tuple(s[part].shape) != tuple(getattr(m, part).shape):
                raise CheckpointError(f"{path}: quant_state[{name!r}].{part} has shape {tuple(s[part].shape)}, "
                                      f"the model's is {tuple(getattr(m, part).shape)}")
            if s[part].is_floating_point() and not bool(torch.isfinite(s[part]).all()):
                raise CheckpointError(f"{path}: quant_state[{name!r}].{part} holds NaN or infinite values")
    missing, unexpected = net.load_state_dict(ckpt["model"], strict=False)
    # Scales of never-run quantisers are legitimately absent (restored from quant_state below),
    # under every name of a shared quantiser (a stage's units share their output quantiser).
    canonical = {id(m): n for n, m in net.named_modules()}
    counters = {n: s["counter"] for n, s in ckpt["quant_state"].items()}
    uncalibrated = {f"{n}.value" for n, m in net.named_modules(remove_duplicate=False)
                    if isinstance(m, ParameterFromRuntimeStatsScaling) and counters.get(canonical[id(m)]) == 0}
    missing = [k for k in missing if k not in uncalibrated]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    restore_quant_state(net, ckpt["quant_state"])
    if ckpt["quant_mode"] in QUANT_MODES:  # "mixed": individual switches are not recorded
        set_quant_mode(net, ckpt["quant_mode"])
    fold_batchnorm(net, bool(ckpt.get("bn_folded", False)))


def load_checkpoint(path: str | Path, model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None
                    ) -> dict[str, Any]:
    """Load weights, quantiser state and quantisation mode into `model` (whose config must equal
    the checkpoint's) and, if given, the optimizer state. Returns the checkpoint dict."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    net = unwrap(model)
    diff = _config_diff(ckpt["config"], config_to_dict(net.cfg))
    if diff:
        raise CheckpointError(f"{path}: detector config {ckpt['config_name']!r} differs from the model's "
                              f"{net.cfg.name!r}: " + "; ".join(diff))
    _load_weights(path, net, ckpt)
    if optimizer is not None:
        if ckpt["optimizer"] is None:
            raise CheckpointError(f"{path} holds no optimizer state (saved for inference only)")
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt


def model_from_checkpoint(path: str | Path) -> tuple[CenterNet, dict[str, Any]]:
    """Build the detector the checkpoint describes and load it (eval mode; run a float-mode model
    under `eval_mode(model)`, which keeps BN unfolded)."""
    ckpt = read_checkpoint(path)   # the config is checked and its size bounded there
    try:
        cfg = config_from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: stored detector config is not a DetectorConfig ({e})") from None
    try:
        model = build_detector(cfg)
    except (ValueError, TypeError) as e:  # a field the model builder refuses (variant, bit widths, ...)
        raise CheckpointError(f"{path}: stored detector config cannot be built: {e}") from None
    _load_weights(Path(path), model, ckpt)
    return model.eval(), ckpt
