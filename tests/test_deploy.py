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

from driver_checks import small_program
from hwconv.boards import load_board
from hwconv.driver.deploy import VENDORED, DeployError, SshTarget, build_folder, upload
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
    for ext in (".bit", ".hwh"):
        (tmp_path / "build" / "bitfile" / f"{stem}{ext}").write_bytes(b"stand-in " + ext.encode())
    f = build_folder(tmp_path / "pkg", detector_hwc, board, build_dir=tmp_path / "build")
    assert f.bitstream == f"{stem}.bit" and not f.missing
    assert {f"bitfile/{stem}.bit", f"bitfile/{stem}.hwh"} <= set(f.files)


def test_ssh_options_are_strict():
    opts = " ".join(SshTarget("h", "u", 2222, Path("/k"), Path("/kh")).options())
    for want in ("BatchMode=yes", "StrictHostKeyChecking=yes", "PasswordAuthentication=no",
                 "UserKnownHostsFile=/kh", "-i /k", "IdentitiesOnly=yes"):
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
    from hwconv.driver.golden_backend import GoldenBackend

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
