"""`hwconv deploy` against a real sshd on 127.0.0.1: the folder's contents, the strict SSH options,
an atomic upload, and the deployed runner giving the same detections remotely as locally."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hwconv.boards import load_board
from hwconv.driver.deploy import (VENDORED, DeployError, DeployRefused, SshTarget, build_folder, foreign_files,
                                  manifest_files, normalize_remote_dir, remote_commands, upload)
from hwconv.spec import EngineConfig

CFG = EngineConfig()
SSHD = "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def detector_hwc(tmp_path_factory) -> Path:
    import torch

    from hwconv.quant.export import export_program
    from hwconv.quant.models import build_detector

    torch.manual_seed(2)
    m = build_detector("tiny")
    m.train()
    with torch.no_grad():
        m(torch.rand(2, 3, m.cfg.input_size, m.cfg.input_size))
    path = tmp_path_factory.mktemp("prog") / "tiny_w4a8_16x16.hwc"
    export_program(m.eval(), CFG).save(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd -D on a free port with a fresh host key, one authorised client key, run as us."""
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen") or not shutil.which("scp"):
        pytest.skip(f"{SSHD}, ssh-keygen or scp missing: apt-get install openssh-server (scripts/bootstrap.sh)")
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o700)
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd needs as root
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start: {proc.stderr.read().strip()[-500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.terminate()
        pytest.skip("sshd did not listen within 10 s")
    import getpass

    target = SshTarget("127.0.0.1", getpass.getuser(), port, d / "client_key", d / "known_hosts")
    yield target, d
    proc.terminate()
    proc.wait(timeout=10)


def _run_local(folder: Path, *args: str) -> dict:
    r = subprocess.run([sys.executable, str(folder / "run_engine.py"), *args], capture_output=True, text=True,
                       timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_folder_contents_without_bitstream(tmp_path, detector_hwc):
    board = load_board("ultra96v2")
    f = build_folder(tmp_path / "pkg", detector_hwc, board, build_dir=tmp_path / "build")
    assert f.bitstream is None and f.missing[0].endswith(f"{board.artifact_stem(CFG)}.bit")
    names = set(f.files)
    assert {"run_engine.py", "hwconv_engine.ipynb", "engine.json", "sample_image.npy", detector_hwc.name} <= names
    assert {f"hwconv/{sub + '/' if sub else ''}{n}" for sub, ns in VENDORED.items() for n in ns} <= names
    nb = json.loads((tmp_path / "pkg" / "hwconv_engine.ipynb").read_text())
    assert nb["nbformat"] == 4 and all(c["cell_type"] in ("code", "markdown") for c in nb["cells"])
    manifest = json.loads((tmp_path / "pkg" / "MANIFEST.json").read_text())
    assert manifest["bitstream"] is None and manifest["missing"] == f.missing
    # The runner uses its own copy of hwconv and never imports torch & co.
    out = _run_local(tmp_path / "pkg", "--backend", "golden", "--json")
    assert out["hwconv_path"] == str((tmp_path / "pkg" / "hwconv").resolve())
    assert out["heavy_modules"] == []
    r = subprocess.run([sys.executable, str(tmp_path / "pkg" / "run_engine.py"), "--backend", "pynq"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no bitstream in bitfile/" in r.stderr


def test_folder_takes_the_bitstream_when_built(tmp_path, detector_hwc):
    board = load_board("pynq_z2")
    stem = board.artifact_stem(CFG)
    (tmp_path / "build" / "bitfile").mkdir(parents=True)
    _built_engine(tmp_path / "build", board, CFG)  # as `hwconv build --board pynq_z2 --engine` leaves it
    for ext in (".bit", ".hwh"):
        (tmp_path / "build" / "bitfile" / f"{stem}{ext}").write_bytes(b"stand-in " + ext.encode())
    f = build_folder(tmp_path / "pkg", detector_hwc, board, build_dir=tmp_path / "build")
    assert f.bitstream == f"{stem}.bit" and not f.missing
    assert {f"bitfile/{stem}.bit", f"bitfile/{stem}.hwh"} <= set(f.files)


def _built_engine(build_dir: Path, board, cfg: EngineConfig) -> None:
    import tomli_w

    (build_dir / "rtl").mkdir(parents=True, exist_ok=True)
    (build_dir / "rtl" / "engine_config.toml").write_text(tomli_w.dumps(
        {"engine": cfg.to_dict(), "target": {"board": board.name, "config_hash": f"0x{cfg.config_hash:08x}"}}))


def test_ssh_options_are_strict():
    opts = " ".join(SshTarget("h", "u", 2222, Path("/k"), Path("/kh")).options())
    for want in ("BatchMode=yes", "StrictHostKeyChecking=yes", "PasswordAuthentication=no",
                 "UserKnownHostsFile=\"/kh\"", "-i /k", "IdentitiesOnly=yes"):
        assert want in opts


def test_deploy_over_ssh_gives_the_same_detections(tmp_path, detector_hwc, sshd):
    target, _ = sshd
    board = load_board("ultra96v2")
    folder = build_folder(tmp_path / "pkg", detector_hwc, board)
    remote = str(tmp_path / "remote" / "hwconv" / board.name)  # an absolute path: the 'board' is us
    assert upload(folder.path, target, remote) == remote
    assert json.loads((Path(remote) / "MANIFEST.json").read_text())["files"] == folder.files
    assert not [p for p in Path(remote).parent.iterdir() if p.name.startswith(".hwconv-upload")]
    r = target.ssh(f"cd {remote} && {sys.executable} run_engine.py --backend golden --json --score-threshold 0.05")
    there = json.loads(r.stdout)
    here = _run_local(folder.path, "--backend", "golden", "--json", "--score-threshold", "0.05")
    assert there["hwconv_path"] == str(Path(remote, "hwconv").resolve())
    assert there["heavy_modules"] == []
    assert there["detections"] == here["detections"] and len(here["detections"]) > 0
    # In-process driver on the same picture: the same boxes.
    from hwconv.driver.engine import EngineDriver
    from hwconv.driver.backends.golden import GoldenBackend

    with EngineDriver(GoldenBackend(CFG)) as d:
        d.load(detector_hwc)
        det = d.detect(np.load(folder.path / "sample_image.npy"), score_threshold=0.05)
    assert np.allclose([x["box"] for x in here["detections"]], det["boxes"])
    # A second deploy replaces the first whole.
    (folder.path / "extra.txt").write_text("x")
    upload(folder.path, target, remote)
    assert (Path(remote) / "extra.txt").exists()


def test_unknown_host_key_and_wrong_key_are_refused(tmp_path, detector_hwc, sshd):
    target, d = sshd
    folder = build_folder(tmp_path / "pkg", detector_hwc, load_board("ultra96v2"))
    (tmp_path / "empty_known_hosts").write_text("")
    strict = SshTarget(target.host, target.user, target.port, target.identity, tmp_path / "empty_known_hosts")
    with pytest.raises(DeployError, match="host key"):
        upload(folder.path, strict, str(tmp_path / "r1"))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    stranger = SshTarget(target.host, target.user, target.port, tmp_path / "other", target.known_hosts)
    with pytest.raises(DeployError, match="key authentication failed"):
        upload(folder.path, stranger, str(tmp_path / "r2"))
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# ------------------------------------------------------------------------------ issue 11: what deploy may touch

def _user_folder(root: Path) -> dict[str, bytes]:
    """A folder hwconv did not make (say, the board's jupyter_notebooks): nested, hidden, a manifest
    look-alike. Returns {relative path: content}."""
    files = {"notebook.ipynb": b"{}", "data/photo.png": b"\x89PNG...", ".hidden": b"secret",
             "sub/deeper/MANIFEST.json": b'{"not": "ours"}', "MANIFEST.txt": b"x"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _survives(root: Path, files: dict[str, bytes]) -> None:
    assert {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()} == files


def test_local_out_that_deploy_did_not_make_is_refused(tmp_path, detector_hwc):
    board = load_board("ultra96v2")
    mine = tmp_path / "notebooks"
    files = _user_folder(mine)
    with pytest.raises(DeployRefused, match=r"-o .*notebooks: exists and is not a hwconv deploy folder"):
        build_folder(mine, detector_hwc, board)
    _survives(mine, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks"]  # no staging left behind
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"-o .*afile: is a file, a folder is needed here"):
        build_folder(tmp_path / "afile", detector_hwc, board)


def test_local_deploy_folder_is_replaced_but_not_with_user_files(tmp_path, detector_hwc):
    board = load_board("ultra96v2")
    pkg = tmp_path / "pkg"
    build_folder(pkg, detector_hwc, board)
    (pkg / "hwconv" / "__pycache__").mkdir()
    (pkg / "hwconv" / "__pycache__" / "x.pyc").write_bytes(b"")   # running the package makes these
    build_folder(pkg, detector_hwc, board)                         # a deploy folder: replaced
    assert not (pkg / "hwconv" / "__pycache__").exists()
    (pkg / "my_results.csv").write_text("keep me")
    with pytest.raises(DeployRefused, match=r"holds 1 file\(s\) hwconv deploy did not write \(my_results.csv\)"):
        build_folder(pkg, detector_hwc, board)
    assert (pkg / "my_results.csv").read_text() == "keep me"
    assert (pkg / "MANIFEST.json").is_file()


def test_manifest_recognition():
    assert manifest_files(json.dumps({"format": "hwconv-deploy", "files": {"a": "0"}}), "m") == {"a", "MANIFEST.json"}
    assert manifest_files(json.dumps({"board": "b", "engine": "e", "program": "p", "files": {}}), "m") is not None
    assert manifest_files(json.dumps({"files": {"a": "0"}}), "m") is None
    assert manifest_files("[" * 10000, "m") is None
    assert foreign_files({"a", "MANIFEST.json"}, ["./a", "./MANIFEST.json", "hwconv/__pycache__/x.pyc",
                                                 ".ipynb_checkpoints/n.ipynb", "b"]) == ["b"]


def test_program_for_another_engine_is_refused(tmp_path, detector_hwc):
    board = load_board("pynq_z2")   # its engine is 8x8 at 100 MHz; the program is for 16x16 at 250 MHz
    with pytest.raises(DeployRefused, match=r"built for engine w4a8_16x16_250mhz \(hash 0x[0-9a-f]{8}\), but "
                                            r"pynq_z2 runs w4a8_8x8_100mhz .*from the pynq_z2 board's default"):
        build_folder(tmp_path / "pkg", detector_hwc, board)
    assert not (tmp_path / "pkg").exists()
    # the engine `hwconv build` made for this board decides; another board's build does not count
    _built_engine(tmp_path / "build", load_board("ultra96v2"), CFG.with_(clock_mhz=200.0))
    with pytest.raises(DeployRefused, match="board's default engine"):
        build_folder(tmp_path / "pkg", detector_hwc, board, build_dir=tmp_path / "build")
    _built_engine(tmp_path / "build", board, CFG.with_(clock_mhz=200.0))
    with pytest.raises(DeployRefused, match=r"runs w4a8_16x16_200mhz .*rtl/engine_config.toml"):
        build_folder(tmp_path / "pkg", detector_hwc, board, build_dir=tmp_path / "build")
    _built_engine(tmp_path / "build", board, CFG)
    assert build_folder(tmp_path / "pkg", detector_hwc, board, build_dir=tmp_path / "build").path.is_dir()


def test_cli_engine_mismatch_is_one_line(tmp_path, detector_hwc, capsys):
    from hwconv.cli import main

    rc = main(["deploy", "--board", "pynq_z2", "--program", str(detector_hwc), "-o", str(tmp_path / "p"),
               "--build-dir", str(tmp_path / "nobuild")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "but pynq_z2 runs w4a8_8x8_100mhz" in err


@pytest.mark.parametrize("host,user,match", [("-oProxyCommand=touch /tmp/x", None, "--host"),
                                             ("board", "-oProxyCommand=x", "--user"),
                                             ("bo ard", None, "--host"), ("", None, "--host")])
def test_option_like_host_or_user_refused(host, user, match):
    with pytest.raises(DeployRefused, match=f"{match} .*must be a plain name"):
        SshTarget(host, user)


def test_missing_key_files_are_named(tmp_path, detector_hwc, capsys):
    from hwconv.cli import main

    base = ["deploy", "--board", "ultra96v2", "--program", str(detector_hwc), "-o", str(tmp_path / "p"),
            "--host", "127.0.0.1"]
    assert main(base + ["--known-hosts", str(tmp_path / "nope_kh")]) == 2
    err = capsys.readouterr().err
    assert "--known-hosts " in err and "nope_kh" in err and "No such file" in err and err.count("\n") == 1
    assert main(base + ["--identity", str(tmp_path / "nope_key")]) == 2
    err = capsys.readouterr().err
    assert "--identity " in err and "nope_key" in err
    assert not (tmp_path / "p").exists()   # refused before the folder was built
    assert main(base + ["--user=-oProxyCommand=x"]) == 2
    assert "--user" in capsys.readouterr().err


def test_remote_commands_are_quoted():
    hint, smoke = remote_commands("hw conv/a;touch pwned", "python3")
    assert hint == "cd 'hw conv/a;touch pwned' && sudo python3 run_engine.py"
    assert smoke == "cd 'hw conv/a;touch pwned' && python3 run_engine.py --backend golden --json"
    _, smoke = remote_commands("d", "/opt/py 3/python;rm -rf x")
    assert smoke == "cd d && /opt/py '3/python;rm' -rf x run_engine.py --backend golden --json"
    for bad in ("~", "", ".", "~other/x", "a/../b"):
        with pytest.raises(DeployRefused):
            normalize_remote_dir(bad)
    assert normalize_remote_dir("~/hwconv/b/") == "hwconv/b"


def test_remote_folder_deploy_did_not_make_survives(tmp_path, detector_hwc, sshd):
    """The issue's test: deploy onto a local sshd into an existing folder hwconv did not create."""
    target, _ = sshd
    folder = build_folder(tmp_path / "pkg", detector_hwc, load_board("ultra96v2"))
    theirs = tmp_path / "remote" / "jupyter_notebooks"
    files = _user_folder(theirs)
    with pytest.raises(DeployRefused, match=r"--dir .*jupyter_notebooks on .*: exists and is not a hwconv "
                                            r"deploy folder"):
        upload(folder.path, target, str(theirs))
    _survives(theirs, files)
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["jupyter_notebooks"]
    # a deploy folder someone added a file to: refused too, the file kept
    ours = tmp_path / "remote" / "hw"
    upload(folder.path, target, str(ours))
    (ours / "results.txt").write_text("mine")
    with pytest.raises(DeployRefused, match=r"holds 1 file\(s\) hwconv deploy did not write \(results.txt\)"):
        upload(folder.path, target, str(ours))
    assert (ours / "results.txt").read_text() == "mine"
    # a file where the folder should be
    (tmp_path / "remote" / "f").write_text("x")
    with pytest.raises(DeployRefused, match="exists and is not a folder"):
        upload(folder.path, target, str(tmp_path / "remote" / "f"))
    assert (tmp_path / "remote" / "f").read_text() == "x"


def test_cli_deploy_with_spaces_and_semicolons_in_dir(tmp_path, detector_hwc, sshd, capsys):
    from hwconv.cli import main

    target, _ = sshd
    remote = tmp_path / "re mote" / "a;touch INJECTED"
    rc = main(["deploy", "--board", "ultra96v2", "--program", str(detector_hwc), "-o", str(tmp_path / "pkg"),
               "--host", target.host, "--user", target.user, "--port", str(target.port),
               "--identity", str(target.identity), "--known-hosts", str(target.known_hosts),
               "--dir", str(remote), "--smoke-test", "--remote-python", sys.executable])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (remote / "MANIFEST.json").is_file()
    assert not list(Path("/").glob("INJECTED")) and not list(Path.home().glob("INJECTED"))
    assert not list((tmp_path / "re mote").glob("INJECTED"))
    import shlex
    assert f"on the board: cd {shlex.quote(str(remote))} && sudo python3 run_engine.py" in out
    assert "smoke test (golden backend on the board):" in out


def test_changed_host_key_warning_is_shown(tmp_path, detector_hwc, sshd):
    target, _ = sshd
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    kind, key = (tmp_path / "impostor.pub").read_text().split()[:2]
    (tmp_path / "kh").write_text(f"[127.0.0.1]:{target.port} {kind} {key}\n")
    changed = SshTarget(target.host, target.user, target.port, target.identity, tmp_path / "kh")
    folder = build_folder(tmp_path / "pkg", detector_hwc, load_board("ultra96v2"))
    with pytest.raises(DeployError) as ei:
        upload(folder.path, changed, str(tmp_path / "r"))
    msg = str(ei.value)
    assert "has CHANGED" in msg and "SHA256:" in msg and "ssh-keyscan" not in msg
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ issue 14 item 3: the notebook

def test_notebook_runs_headless_and_draws_the_picture(tmp_path, detector_hwc):
    """The notebook deploy ships, executed as Jupyter would (nbclient + ipykernel), golden backend."""
    nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel")
    nbclient = pytest.importorskip("nbclient", reason="pip install nbclient ipykernel")
    pytest.importorskip("ipykernel", reason="pip install ipykernel")
    pytest.importorskip("matplotlib")
    folder = build_folder(tmp_path / "pkg", detector_hwc, load_board("ultra96v2"))
    nb = nbformat.read(folder.path / "hwconv_engine.ipynb", as_version=4)
    nbformat.validate(nb)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder.path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(pictures) == 1
    import base64

    assert base64.b64decode(pictures[0]["data"]["image/png"]).startswith(b"\x89PNG")
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "matplotlib not installed" not in text
    assert any("'frames': 3" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)


def test_notebook_program_name_is_a_python_literal(tmp_path, detector_hwc):
    odd = tmp_path / 'we"ird\'name.hwc'
    shutil.copy(detector_hwc, odd)
    folder = build_folder(tmp_path / "pkg", odd, load_board("ultra96v2"))
    nb = json.loads((folder.path / "hwconv_engine.ipynb").read_text())
    src = "".join(nb["cells"][2]["source"])
    import ast

    ast.parse(src)   # the name cannot break (or inject into) the cell's code
    assert repr(odd.name) in src
