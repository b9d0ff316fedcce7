"""Human-readable descriptions of the contract and of program files (layer tables, register map):
what `hwconv inspect` and `hwconv spec` print (named so as not to shadow the stdlib `inspect`)."""

from __future__ import annotations

from .spec import DESCRIPTOR_FIELD_OFFSETS, REGISTERS, REQUANT_OPS, ErrorCode, Flag, Program
from .spec.errors import printable
from .spec.isa import TENSOR_REF_FIELD_OFFSETS
from .compiler.cost import ideal_cycles, layer_macs, peak_macs_per_cycle
from .compiler.cycles import program_cycles
from .spec.program import FORMAT_VERSION


def _shape(ref) -> str:
    return f"{ref.height}x{ref.width}x{ref.channels}"


def program_table(prog: Program) -> list[dict]:
    rows = []
    model = program_cycles(prog.layers, prog.config)
    for i, (d, name) in enumerate(zip(prog.layers, prog.layer_names)):
        rows.append({
            "index": i, "name": printable(name), "op": d.opcode.name,
            "kernel": f"{d.kernel}x{d.kernel}/s{d.stride}", "in": _shape(d.in0),
            "out": _shape(d.out) + (" (2x)" if d.flags & Flag.UPSAMPLE2X else ""),
            "wbits": d.weight_bits or "-", "clamp": f"[{d.clamp_lo},{d.clamp_hi}]" if d.opcode in REQUANT_OPS else "-",
            "macs": layer_macs(d), "ideal_cycles": ideal_cycles(d, prog.config.pe_in, prog.config.pe_out),
            "model_cycles": model[i].total, "bound": model[i].bound,
            "peak_macs_per_cycle": peak_macs_per_cycle(d, prog.config.pe_in, prog.config.pe_out),
        })
    return rows


def format_program(prog: Program, source: str = "", board=None) -> str:
    """The program's header, tensors and layer table, with cycles and fps at `board`'s clock
    (a Board; default: the catalog board whose default engine is the program's, if any)."""
    cfg = prog.config
    lines = [
        f"program {printable(source, 400)}".rstrip(),
        f"  format {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}, engine {cfg.stem} (hash 0x{cfg.config_hash:08x})",
        f"  {len(prog.layers)} layers, params {len(prog.params)} bytes, arena {prog.arena_bytes} bytes",
    ]
    for t in prog.tensors:
        lines.append(f"  {t.role:6s} {printable(t.name)}: {_shape(t.ref)} {'int8' if t.signed else 'uint8'} "
                     f"scale {t.scale:.6g} @ arena+{t.ref.addr}")
    rows = program_table(prog)
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines.append("  " + "  ".join(c.ljust(widths[c]) for c in cols))
    lines += ["  " + "  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    macs = sum(r["macs"] for r in rows)
    cycles = sum(r["ideal_cycles"] for r in rows)
    cfg = prog.config
    from .rtl.clock import clock_for

    # min(board clock, estimated Fmax): a figure needs a clock the design meets
    clock = clock_for(board, cfg) if board is not None else clock_for(cfg)
    mhz = clock.mhz
    lines.append(f"  total {macs / 1e9:.3f} GMAC; ideal {cycles} cycles = {mhz * 1e6 / cycles:.0f} fps "
                 f"at {mhz:.1f} MHz on a {cfg.pe_in}x{cfg.pe_out} array (a lower bound: no stalls)")
    modelled = sum(r["model_cycles"] for r in rows)
    lines.append(f"  cycle model (hwconv.compiler.cycles, DRAM latency 40): {modelled} cycles = "
                 f"{mhz * 1e6 / modelled:.1f} fps at {mhz:.1f} MHz, MAC utilisation "
                 f"{macs / sum(r['model_cycles'] * r['peak_macs_per_cycle'] for r in rows):.1%} of the array's peak")
    lines.append(f"  clock: {clock.source}")
    return "\n".join(lines)


def format_contract() -> str:
    lines = [f"program format {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}", "", "register map (AXI4-Lite, 32-bit):"]
    for r in REGISTERS:
        bits = ", ".join(f"{f}[{lsb + w - 1}:{lsb}]" if w > 1 else f"{f}[{lsb}]" for f, lsb, w in r.bits)
        lines.append(f"  0x{r.offset:02x} {r.name:20s} {r.access.value:4s} {r.doc}" + (f" ({bits})" if bits else ""))
    lines += ["", "error codes:"] + [f"  {e.value:2d} {e.name}" for e in ErrorCode]
    lines += ["", "layer descriptor (byte offset, width):"]
    lines += [f"  {off:3d} {w:2d}  {name}" for name, (off, w) in DESCRIPTOR_FIELD_OFFSETS.items()]
    lines += ["", "tensor reference (inside in0/in1/out):"]
    lines += [f"  {off:3d} {w:2d}  {name}" for name, (off, w) in TENSOR_REF_FIELD_OFFSETS.items()]
    return "\n".join(lines)
