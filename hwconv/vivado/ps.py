"""The processing system side of the block design: what each PS type calls its ports and settings.

These are facts of the PS IP (processing_system7 for Zynq-7000, zynq_ultra_ps_e for Zynq
UltraScale+), not of a board, so they live here and a board file only says which PS it has, its
HP port width and its fabric clocks. Names as in the IPs' block-design pins and CONFIG
parameters (PG082 processing_system7, PG201 zynq_ultra_ps_e; the same names appear in FINN's
Zynq shell and PYNQ's base overlays).

One clock drives everything in the PL: the engine, both SmartConnects and the PS ports they meet,
so the design has no clock crossing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..boards.catalog import Board
from ..spec.config import EngineConfig


@dataclass(frozen=True)
class PsSide:
    ip: str                                  # VLNV without version; the newest installed is used
    automation_rule: str                     # apply_bd_automation rule that applies the board preset
    automation_config: str                   # its -config dict
    config: tuple[tuple[str, str], ...]      # CONFIG.<name> values set after the preset
    clock_pin: str                           # fabric clock that drives the engine
    reset_pin: str                           # active-low reset that comes with it
    actual_mhz_property: str                 # CONFIG.<name>: the frequency the PS really makes
    control_port: str                        # PS manager port the engine's registers hang off
    memory_port: str                         # PS subordinate (HP) port to DDR
    port_clocks: tuple[str, ...]             # clock inputs of those two ports
    irq_pin: str                             # PL-to-PS interrupt input (bit 0 is PYNQ's)
    control_base: int                        # where the engine's registers go in the PS's map
    control_window: tuple[int, int]          # [start, end) the control port decodes
    ddr_segments: tuple[str, ...]            # the memory port's DDR segments the engine can address


def ps_side(board: Board, config: EngineConfig) -> PsSide:
    _, index = board.engine_clock
    if board.ps == "zynq7":
        return _zynq7(board, config, index)
    if board.ps == "zynq_ultra_ps_e":
        return _zynq_ultra(board, config, index)
    raise AssertionError(f"{board.source}: no Vivado flow for PS {board.ps!r}")  # catalog validated it


def _mhz(value: float) -> str:
    return f"{value:g}"


def _zynq7(board: Board, config: EngineConfig, n: int) -> PsSide:
    # Zynq-7000 TRM (UG585) system address map: M_AXI_GP0 decodes 0x4000_0000-0x7FFF_FFFF.
    # The HP ports are AXI3; the memory SmartConnect converts the engine's AXI4 bursts.
    return PsSide(
        ip="xilinx.com:ip:processing_system7",
        automation_rule="xilinx.com:bd_rule:processing_system7",
        automation_config='make_external "FIXED_IO, DDR" apply_board_preset "1" '
                          'Master "Disable" Slave "Disable"',
        config=(
            ("PCW_USE_M_AXI_GP0", "1"),
            ("PCW_USE_S_AXI_HP0", "1"),
            ("PCW_S_AXI_HP0_DATA_WIDTH", str(board.hp_port_width)),
            (f"PCW_FPGA_FCLK{n}_ENABLE", "1"),
            (f"PCW_EN_CLK{n}_PORT", "1"),
            (f"PCW_EN_RST{n}_PORT", "1"),
            (f"PCW_FPGA{n}_PERIPHERAL_FREQMHZ", _mhz(config.clock_mhz)),
            ("PCW_USE_FABRIC_INTERRUPT", "1"),
            ("PCW_IRQ_F2P_INTR", "1"),
        ),
        clock_pin=f"FCLK_CLK{n}",
        reset_pin=f"FCLK_RESET{n}_N",
        actual_mhz_property=f"PCW_ACT_FPGA{n}_PERIPHERAL_FREQMHZ",
        control_port="M_AXI_GP0",
        memory_port="S_AXI_HP0",
        port_clocks=("M_AXI_GP0_ACLK", "S_AXI_HP0_ACLK"),
        irq_pin="IRQ_F2P",
        control_base=0x4000_0000,
        control_window=(0x4000_0000, 0x8000_0000),
        ddr_segments=("S_AXI_HP0/HP0_DDR_LOWOCM",),   # all of DDR: its range is the DDR size
    )


def _zynq_ultra(board: Board, config: EngineConfig, n: int) -> PsSide:
    # ZU+ TRM (UG1085) address map: M_AXI_HPM0_FPD's low window is 0xA000_0000-0xAFFF_FFFF; DDR is
    # split into DDR_LOW (0-2 GB) and DDR_HIGH (from 0x8_0000_0000), which a 32-bit engine
    # address cannot reach. The IP calls M_AXI_HPM0/1_FPD and M_AXI_HPM0_LPD M_AXI_GP0/1/2, and
    # S_AXI_HP0_FPD S_AXI_GP2 (SAXIGP2 in its address segments).
    ddr = ("SAXIGP2/HP0_DDR_LOW",) + (("SAXIGP2/HP0_DDR_HIGH",) if config.addr_width >= 40 else ())
    return PsSide(
        ip="xilinx.com:ip:zynq_ultra_ps_e",
        automation_rule="xilinx.com:bd_rule:zynq_ultra_ps_e",
        automation_config='apply_board_preset "1"',
        config=(
            ("PSU__USE__M_AXI_GP0", "1"),                 # M_AXI_HPM0_FPD: engine registers
            ("PSU__MAXIGP0__DATA_WIDTH", "32"),           # registers are 32-bit: no width converter
            ("PSU__USE__M_AXI_GP1", "0"),                 # M_AXI_HPM1_FPD, M_AXI_HPM0_LPD: unused,
            ("PSU__USE__M_AXI_GP2", "0"),                 # and an enabled port needs a clock
            ("PSU__USE__S_AXI_GP2", "1"),                 # S_AXI_HP0_FPD: engine to DDR
            ("PSU__SAXIGP2__DATA_WIDTH", str(board.hp_port_width)),
            (f"PSU__FPGA_PL{n}_ENABLE", "1"),
            # Some presets (Ultra96-V2) pin every PLL divider; without this the PL clock
            # request below is ignored.
            ("PSU__OVERRIDE__BASIC_CLOCK", "0"),
            (f"PSU__CRL_APB__PL{n}_REF_CTRL__FREQMHZ", _mhz(config.clock_mhz)),
            ("PSU__USE__IRQ0", "1"),                      # pl_ps_irq0
        ),
        clock_pin=f"pl_clk{n}",
        reset_pin=f"pl_resetn{n}",
        actual_mhz_property=f"PSU__CRL_APB__PL{n}_REF_CTRL__ACT_FREQMHZ",
        control_port="M_AXI_HPM0_FPD",
        memory_port="S_AXI_HP0_FPD",
        port_clocks=("maxihpm0_fpd_aclk", "saxihp0_fpd_aclk"),
        irq_pin="pl_ps_irq0",
        control_base=0xA000_0000,
        control_window=(0xA000_0000, 0xB000_0000),
        ddr_segments=ddr,
    )
