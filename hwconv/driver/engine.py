"""EngineDriver: load a program, run it, read the counters, detect; the same code on every backend.

``EngineDriver(GoldenBackend(config))`` runs against the golden register model; on a PYNQ board
``open_engine("hwconv_<board>_<stem>.bit")`` (backends/pynq.py) returns the EngineDriver that the
overlay's engine IP owns. The register protocol itself (identify, regions, start, wait, status,
counters) is `EngineProtocol` (protocol.py), the one implementation the cocotb testbench uses too;
this class is its sync facade plus what a host adds around it: device buffers, tensors in and out
of the arena, inputs checked, detection.

A run, from one start (hwconv.spec.registers): the driver writes the inputs into the arena
buffer, flushes, clears IRQ_STATUS, writes CONTROL.start and waits for IRQ_STATUS.done (on the
interrupt between polls) until its deadline; a run that is not done by then raises
EngineTimeout and leaves the engine for `soft_reset()`. STATUS.error raises EngineRunError with
the ErrorCode name, the layer index and name. Then it invalidates the arena and reads the
outputs and the counters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..spec.memory import read_tensor, write_tensor
from ..spec.program import Program
from ..spec.registers import IRQ_STATUS_DONE, ErrorCode, offset
from .backends import Backend, BackendError, Buffer
from .protocol import BackendPort, EngineNotFound, EngineProtocol, EngineTimeout, run_sync

__all__ = ["EngineDriver", "EngineNotFound", "EngineRunError", "EngineTimeout", "RunStats"]


class EngineRunError(RuntimeError):
    """The engine stopped a run with an error code (STATUS.error)."""

    def __init__(self, code: ErrorCode | int, layer: int, layer_name: str | None, layers_done: int):
        where = f"layer {layer}" + (f" ({layer_name})" if layer_name else "")
        what = code.name if isinstance(code, ErrorCode) else f"unknown error code {code}"
        super().__init__(f"engine stopped with {what} at {where} after {layers_done} layer(s)")
        self.code, self.layer, self.layer_name, self.layers_done = code, layer, layer_name, layers_done


@dataclass
class RunStats:
    cycles: int
    clock_hz: float
    layer_cycles: list[int] = field(default_factory=list)
    layer_macs: list[int] = field(default_factory=list)
    stall_cycles: int = 0
    layers_done: int = 0
    wall_s: float = 0.0                  # start strobe to done seen by the host
    counter_source: str = "hardware"

    @property
    def engine_s(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def fps(self) -> float | None:
        """Frames per second at the backend clock, from CYCLES (None when no cycles counted)."""
        return self.clock_hz / self.cycles if self.cycles else None

    def to_dict(self) -> dict:
        return {"cycles": self.cycles, "clock_mhz": self.clock_hz / 1e6, "engine_ms": 1e3 * self.engine_s,
                "fps": self.fps, "stall_cycles": self.stall_cycles, "layers_done": self.layers_done,
                "wall_ms": 1e3 * self.wall_s, "layer_cycles": self.layer_cycles, "layer_macs": self.layer_macs,
                "counter_source": self.counter_source}


class EngineDriver:
    """The sync host of one engine behind a `Backend` (module docstring)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.protocol = EngineProtocol(BackendPort(backend))
        self.program: Program | None = None
        self._buffers: dict[str, Buffer] = {}

    # -- registers ------------------------------------------------------------------------------
    def read(self, name_or_offset) -> int:
        """A register by spec name (or byte offset)."""
        off = offset(name_or_offset) if isinstance(name_or_offset, str) else name_or_offset
        return self.backend.read_reg(off)

    def write(self, name_or_offset, value: int) -> None:
        off = offset(name_or_offset) if isinstance(name_or_offset, str) else name_or_offset
        self.backend.write_reg(off, value)

    def read64(self, name: str) -> int:
        """A 64-bit counter: _LO first (it latches _HI), then _HI."""
        return run_sync(self.protocol.read64(name))

    def identify(self) -> dict:
        """ID, VERSION and CONFIG_HASH, checked: an EngineNotFound names what does not match."""
        return run_sync(self.protocol.identify())

    def status(self) -> dict:
        st = run_sync(self.protocol.status())
        code = st.error.name if isinstance(st.error, ErrorCode) else str(st.error)
        return {"busy": st.busy, "done": st.done, "error": st.failed,
                "error_code": code if st.failed else None, "layers_done": st.layers_done}

    def soft_reset(self, timeout_s: float = 1.0) -> None:
        """CONTROL.soft_reset: back to idle (configuration registers are kept)."""
        run_sync(self.protocol.soft_reset(timeout_s))

    # -- program --------------------------------------------------------------------------------
    def load(self, program: Program | str | Path) -> None:
        """Allocate device buffers for the image, params and arena, copy them, write the bases."""
        if not isinstance(program, Program):
            program = Program.load(program)
        ident = self.identify()
        if ident["config_hash"] != program.config.config_hash:
            raise EngineNotFound(
                f"{self.backend.name}: the engine's CONFIG_HASH is 0x{ident['config_hash']:08x}, the program "
                f"was built for {program.config.name} (0x{program.config.config_hash:08x}); export the "
                "program for this engine's config or load the bitstream built for it")
        known = getattr(self.backend, "config", None)
        if known is None:  # a PYNQ backend without a config file: the hash check above vouches for it
            self.backend.config = known = program.config
        if known.config_hash != program.config.config_hash:
            raise EngineNotFound(f"{self.backend.name}: backend config {known.name} (0x{known.config_hash:08x}) "
                                 f"differs from the program's (0x{program.config.config_hash:08x})")
        self.soft_reset()
        self._free()
        image, params = program.device_image(), program.params
        self._buffers = {"image": self.backend.alloc(len(image)),
                         "params": self.backend.alloc(max(1, len(params))),
                         "arena": self.backend.alloc(program.arena_bytes)}
        self._buffers["image"].array[:] = np.frombuffer(image, np.uint8)
        self._buffers["params"].array[:len(params)] = np.frombuffer(params, np.uint8)
        for b in self._buffers.values():
            b.flush()
        limit = 1 << program.config.addr_width
        for name, b in self._buffers.items():
            if b.device_address + b.nbytes > limit:
                raise BackendError(f"{name} buffer at 0x{b.device_address:x} is beyond the engine's "
                                   f"{program.config.addr_width}-bit address space")
        run_sync(self.protocol.set_regions(self._buffers["image"].device_address,
                                           self._buffers["params"].device_address, len(params),
                                           self._buffers["arena"].device_address, program.arena_bytes))
        self.program = program

    def _free(self) -> None:
        for b in self._buffers.values():
            b.free()
        self._buffers = {}

    def _check_inputs(self, inputs) -> dict[str, np.ndarray]:
        prog = self._need_program()
        if not isinstance(inputs, dict):
            if len(prog.inputs) != 1:
                raise ValueError(f"the program has inputs {[t.name for t in prog.inputs]}: pass a dict")
            inputs = {prog.inputs[0].name: inputs}
        names = {t.name for t in prog.inputs}
        if set(inputs) != names:
            raise ValueError(f"inputs {sorted(inputs)} given, the program takes {sorted(names)}")
        out = {}
        for t in prog.inputs:
            v = np.asarray(inputs[t.name])
            want = (t.ref.height, t.ref.width, t.ref.channels)
            if not np.issubdtype(v.dtype, np.integer):
                raise ValueError(f"input {t.name!r}: dtype {v.dtype}; quantise with scale {t.scale} first")
            if v.shape != want:
                raise ValueError(f"input {t.name!r}: shape {v.shape}, the program expects {want} (H, W, C)")
            lo, hi = (-128, 127) if t.signed else (0, 255)
            if v.size and (v.min() < lo or v.max() > hi):
                raise ValueError(f"input {t.name!r}: values outside [{lo}, {hi}]")
            out[t.name] = v
        return out

    def _need_program(self) -> Program:
        if self.program is None:
            raise RuntimeError("no program loaded: call load(program) first")
        return self.program

    # -- runs -----------------------------------------------------------------------------------
    def run(self, inputs, timeout_s: float = 10.0, *, layer_counters: bool = True
            ) -> tuple[dict[str, np.ndarray], RunStats]:
        """Run the loaded program on integer inputs ({name: (H, W, C)}, or one array when the
        program has one input). Returns ({output name: integers (H, W, C)}, RunStats)."""
        prog = self._need_program()
        values = self._check_inputs(inputs)
        arena = self._buffers["arena"]
        for t in prog.inputs:
            write_tensor(arena.array, t.ref, values[t.name])
        arena.flush()
        t0 = time.perf_counter()
        st = run_sync(self.protocol.run(timeout_s))
        wall = time.perf_counter() - t0
        run_sync(self.protocol.write("IRQ_STATUS", IRQ_STATUS_DONE))  # the interrupt line low again
        if st.failed:
            name = prog.layer_names[st.error_layer] if st.error_layer < len(prog.layer_names) else None
            raise EngineRunError(st.error, st.error_layer, name, st.layers_done)
        arena.invalidate()
        outputs = {t.name: read_tensor(arena.array, t.ref, t.signed) for t in prog.outputs}
        c = run_sync(self.protocol.counters(st.layers_done if layer_counters else 0))
        stats = RunStats(cycles=c.cycles, clock_hz=self.backend.clock_hz, stall_cycles=c.stall_cycles,
                         layers_done=c.layers_done, wall_s=wall,
                         layer_cycles=[x.cycles for x in c.layers], layer_macs=[x.macs for x in c.layers],
                         counter_source=getattr(self.backend, "counter_source", "hardware"))
        return outputs, stats

    def throughput_test(self, n: int = 10, inputs=None, timeout_s: float = 10.0) -> dict:
        """Run n frames back to back; figures from the engine's counters and from the host clock."""
        if n < 1:
            raise ValueError(f"throughput_test: n must be >= 1, got {n}")
        prog = self._need_program()
        if inputs is None:
            rng = np.random.default_rng(0)
            inputs = {t.name: rng.integers(*((-128, 128) if t.signed else (0, 256)),
                                           size=(t.ref.height, t.ref.width, t.ref.channels))
                      for t in prog.inputs}
        cycles, t0 = [], time.perf_counter()
        for _ in range(n):
            _, st = self.run(inputs, timeout_s, layer_counters=False)
            cycles.append(st.cycles)
        host_s = (time.perf_counter() - t0) / n
        per_frame = float(np.mean(cycles))
        clock = self.backend.clock_hz
        macs = sum(_macs(d) for d in prog.layers)
        engine_s = per_frame / clock if per_frame else None
        return {"frames": n, "clock_mhz": clock / 1e6, "cycles_per_frame": per_frame,
                "latency_ms": None if engine_s is None else 1e3 * engine_s,
                "fps": None if engine_s is None else 1.0 / engine_s,
                "host_latency_ms": 1e3 * host_s, "host_fps": 1.0 / host_s,
                "gmac_per_frame": macs / 1e9,
                "gmac_per_s": None if engine_s is None else macs / 1e9 / engine_s,
                "counter_source": st.counter_source}

    # -- detection ------------------------------------------------------------------------------
    def detect(self, image: np.ndarray, *, score_threshold: float = 0.3, k: int = 100,
               timeout_s: float = 10.0) -> dict:
        """(H, W, 3) uint8 image -> {"boxes" (n, 4) xyxy image pixels, "scores", "labels",
        "class_names" (from the program, or None), "stats": RunStats}."""
        from .decode import decode_outputs
        from .preprocess import as_rgb_uint8, boxes_to_image, letterbox, quantize_image

        prog = self._need_program()
        if len(prog.inputs) != 1 or prog.inputs[0].ref.channels != 3:
            raise ValueError("detect() needs a program with one 3-channel image input")
        t = prog.inputs[0]
        rgb = as_rgb_uint8(image)
        picture, (sx, sy) = letterbox(rgb, t.ref.height, t.ref.width)
        outputs, stats = self.run({t.name: quantize_image(picture, t)}, timeout_s, layer_counters=False)
        det = decode_outputs(prog, outputs, k=k, score_threshold=score_threshold)
        boxes = boxes_to_image(det["boxes"], sx, sy, *rgb.shape[:2])
        names = prog.extra.get("class_names")
        names = names if isinstance(names, list) and all(isinstance(c, str) for c in names) else None
        return {"boxes": boxes, "scores": det["scores"], "labels": det["labels"], "class_names": names,
                "stats": stats}

    def close(self) -> None:
        self._free()
        self.program = None
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _macs(d) -> int:
    from ..compiler.cost import layer_macs

    return layer_macs(d)
