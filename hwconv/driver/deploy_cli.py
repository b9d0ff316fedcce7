"""`hwconv deploy`: build a board package and copy it to a PYNQ board over SSH."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..options import int_range


def register(add) -> None:
    sp = add("deploy", cmd_deploy, "build a board package (bitstream, program, driver, runner, notebook) "
                                   "and copy it over SSH (key auth, strict host keys)")
    sp.add_argument("--board", required=True, help="catalog name or board .toml")
    sp.add_argument("--program", required=True, help="the .hwc program (hwconv export)")
    sp.add_argument("--host", help="board address; without it the folder is only built")
    sp.add_argument("--user", help="SSH user (PYNQ images: xilinx)")
    sp.add_argument("--port", type=int_range(1, 65535), default=22)
    sp.add_argument("--identity", help="private key file (ssh -i)")
    sp.add_argument("--known-hosts", help="known_hosts file holding the board's host key (default: ssh's)")
    sp.add_argument("--dir", help="folder on the board (default: hwconv/<board>, in the user's home); an "
                                  "existing folder is replaced only if hwconv deploy made it")
    sp.add_argument("--build-dir", default="out/build", help="hwconv build's output (bitfile/ inside)")
    sp.add_argument("--engine", help="engine config the board's bitstream was built with (default: the one "
                                     "hwconv build wrote in --build-dir, else the board's)")
    sp.add_argument("-o", "--out", help="local deploy folder (default: out/deploy/<board>); an existing "
                                        "folder is replaced only if hwconv deploy made it")
    sp.add_argument("--smoke-test", action="store_true", help="run the runner on the board (golden backend)")
    sp.add_argument("--remote-python", default="python3", help="python on the board for --smoke-test")


def cmd_deploy(args) -> int:
    from ..boards import load_board
    from .deploy import DeployError, SshTarget, build_folder, normalize_remote_dir, remote_commands, upload

    try:
        # Every option is checked before the folder is built: a bad --host is not found after the work.
        board = load_board(args.board)
        target = remote = None
        if args.host:
            target = SshTarget(args.host, args.user, args.port, Path(args.identity) if args.identity else None,
                               Path(args.known_hosts) if args.known_hosts else None)
            target.check_files()
            remote = normalize_remote_dir(args.dir or f"hwconv/{board.name}")
            hint, smoke = remote_commands(remote, args.remote_python)
        out = Path(args.out or f"out/deploy/{board.name}")
        folder = build_folder(out, Path(args.program), board,
                              build_dir=Path(args.build_dir) if args.build_dir else None,
                              engine_file=Path(args.engine) if args.engine else None)
        print(f"deploy folder {folder.path}: {len(folder.files)} files, program {folder.program}")
        if folder.bitstream:
            print(f"  bitstream: bitfile/{folder.bitstream} (+ .hwh)")
        else:
            print(f"  NO BITSTREAM: {', '.join(folder.missing)} not found. `hwconv build --board {board.name}` "
                  "makes them where Vivado is installed. Without them the package runs with --backend golden "
                  "(bit-exact detections, model cycle figures); the PYNQ backend needs the .bit/.hwh.")
        if target is None:
            print("  not copied: pass --host to copy it to a board")
            return 0
        remote = upload(folder.path, target, remote)
        print(f"copied to {target.destination}:{remote}")
        print(f"  on the board: {hint}      (or open hwconv_engine.ipynb in Jupyter)")
        if args.smoke_test:
            r = target.ssh(smoke)
            try:
                result = json.loads(r.stdout)
                n, ms = len(result["detections"]), float(result["host_ms"])
            except (ValueError, KeyError, TypeError):
                raise DeployError(f"smoke test: the runner on the board did not print its JSON result "
                                  f"(stderr: {r.stderr.strip()[-300:]!r})") from None
            print(f"  smoke test (golden backend on the board): {n} detection(s), {ms:.0f} ms")
    except DeployError as exc:
        print(f"hwconv deploy: error: {exc}", file=sys.stderr)
        return 2
    return 0
