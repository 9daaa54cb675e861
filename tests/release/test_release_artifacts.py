"""Reproducible sdist and wheel, signed checksums, the CI definitions: the fast parts of the release."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import need_tools

REPO = Path(__file__).resolve().parents[2]
SIGN = REPO / "packaging" / "sign-release"


def _checkout(dest: Path) -> Path:
    """The tracked files of the work tree (as edited) in ``dest``, with fresh file times."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    return dest


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    """Two checkouts in different places with different file times, built with one SOURCE_DATE_EPOCH."""
    need_tools("git")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "SETUPTOOLS_SCM_PRETEND_VERSION": "0.2.0"}
    outs = []
    for name in ("a", "b"):
        tree = _checkout(tmp_path / name)
        if name == "b":
            later = time.time() + 3600
            for p in tree.rglob("*"):
                os.utime(p, (later, later))
        out = tmp_path / f"dist-{name}"
        subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out),
                        str(tree)], env=env, check=True, capture_output=True, timeout=600)
        sdist = next(out.glob("*.tar.gz"))
        subprocess.run([sys.executable, str(REPO / "packaging" / "reproducible_tar.py"), "--normalize", str(sdist)],
                       env=env, check=True, timeout=120)
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == ["imaging_utility-0.2.0-py3-none-any.whl", "imaging_utility-0.2.0.tar.gz"]
    assert names == sorted(p.name for p in outs[1].iterdir())
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def _keypair(tmp: Path, password: str | None) -> tuple[Path, Path]:
    pub, key = tmp / "test.pub", tmp / "test.key"
    args = ["minisign", "-G", "-p", str(pub), "-s", str(key)] + ([] if password else ["-W"])
    stdin = f"{password}\n{password}\n" if password else None
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True, timeout=60)
    return pub, key


def _dist(tmp: Path) -> Path:
    dist = tmp / "dist"
    (dist / "completions").mkdir(parents=True)
    (dist / "imaging_utility-0.2.0-py3-none-any.whl").write_bytes(os.urandom(5000))
    (dist / "imaging-utility_0.2.0_amd64.deb").write_bytes(os.urandom(7000))
    (dist / "completions" / "imaging-utility.bash").write_text("complete -F _x imaging-utility\n")
    return dist


# a password-protected key costs two scrypt derivations (tens of seconds on a busy machine): release tests
@pytest.mark.parametrize("password", [None, pytest.param("correct horse", marks=pytest.mark.release)])
def test_signed_checksums_verify_and_tampering_fails(tmp_path: Path, password: str | None) -> None:
    need_tools("minisign", "sha256sum")
    pub, key = _keypair(tmp_path, password)
    dist = _dist(tmp_path)
    env = {**os.environ, "MINISIGN_SECRET_KEY": key.read_text()}
    if password:
        env["MINISIGN_PASSWORD"] = password
    proc = subprocess.run([str(SIGN), str(dist)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sums = (dist / "SHA256SUMS").read_text().splitlines()
    assert [line.split()[1] for line in sums] == ["completions/imaging-utility.bash",
                                                  "imaging-utility_0.2.0_amd64.deb",
                                                  "imaging_utility-0.2.0-py3-none-any.whl"]

    def verify() -> int:
        return subprocess.run(["minisign", "-V", "-p", str(pub), "-m", str(dist / "SHA256SUMS")],
                              capture_output=True, timeout=60).returncode

    def checksums() -> int:
        return subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dist, capture_output=True,
                              timeout=60).returncode

    assert verify() == 0 and checksums() == 0
    # a modified artifact fails its checksum; a modified SHA256SUMS fails the signature
    deb = dist / "imaging-utility_0.2.0_amd64.deb"
    data = bytearray(deb.read_bytes())
    data[100] ^= 1
    deb.write_bytes(bytes(data))
    assert checksums() != 0
    (dist / "SHA256SUMS").write_text("\n".join(sums).replace(sums[1][:64], "0" * 64) + "\n")
    assert verify() != 0


@pytest.mark.release
def test_sign_with_the_key_in_a_file_and_a_wrong_password(tmp_path: Path) -> None:
    need_tools("minisign")
    pub, key = _keypair(tmp_path, "right")
    dist = _dist(tmp_path)
    env = {**os.environ, "MINISIGN_SECRET_KEY": str(key), "MINISIGN_PASSWORD": "right"}
    subprocess.run([str(SIGN), str(dist)], env=env, check=True, capture_output=True, timeout=120)
    subprocess.run(["minisign", "-V", "-p", str(pub), "-m", str(dist / "SHA256SUMS")], check=True,
                   capture_output=True, timeout=60)
    proc = subprocess.run([str(SIGN), str(dist)], env={**env, "MINISIGN_PASSWORD": "wrong"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "could not sign" in proc.stderr


def test_refuses_to_sign_without_a_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINISIGN_")}
    for cmd in ([str(SIGN), str(_dist(tmp_path))], [str(REPO / "scripts" / "build-release")]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert "refusing to sign: MINISIGN_SECRET_KEY is not set" in proc.stderr
        assert "minisign -G -p imaging-utility.pub -s imaging-utility.key" in proc.stderr
        assert "--no-sign" in proc.stderr
    assert not (tmp_path / "dist" / "SHA256SUMS").exists()


def test_workflows_pass_actionlint(monkeypatch: pytest.MonkeyPatch) -> None:
    # the test extra installs actionlint into the venv, which scripts/test does not put on PATH
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    need_tools("actionlint")
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert {p.name for p in workflows} >= {"ci.yml", "release.yml"}
    proc = subprocess.run(["actionlint", *map(str, workflows)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_entry_point_runs_exactly_scripts_test() -> None:
    lines = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[-1] == "exec scripts/test"
