"""Vivado build flow: Tcl that packages the engine's Verilog as an IP with the engine's VLNV,
builds the block design around the board's PS, implements it and exports <stem>.bit + .hwh;
`hwconv build` (cli.py) writes it and runs it when Vivado is installed.

plan.py (what and where), ps.py (PS facts), package_ip.py / block_design.py / implement.py (one
script each), project.py (settings.tcl, build.tcl, writing), run.py (running Vivado).
"""
