"""The man page and the bash/zsh/fish completions are generated from the parser and work in real tools."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from conftest import cli, need_tools
from imaging_utility.cli.docgen import commands, completion_script, man_page
from imaging_utility.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()[0]


def _render(page: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True, timeout=60,
                          env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def test_man_page_has_every_command_option_and_example(parser: argparse.ArgumentParser, tmp_path: Path) -> None:
    need_tools("man", "groff")
    page = tmp_path / "imaging-utility.1"
    page.write_text(man_page(parser))
    proc = _render(page)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = proc.stdout
    for cmd in commands(parser):
        assert f"IMAGING-UTILITY {cmd.name.upper()}" in text
        for opt in cmd.options:
            for flag in opt.flags:
                assert flag in text, (cmd.name, flag)
        for line in (cmd.parser.epilog or "").splitlines()[1:]:
            if line.strip().startswith("imaging-utility "):
                assert line.strip() in text, line  # examples kept verbatim: they copy and paste
    for alias in ("ntfs-extract", "ntfs-webdav", "ntfs-serve"):
        assert alias in text
    assert "EXIT STATUS" in text and "130" in text


def test_man_page_is_reproducible(parser: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = man_page(parser)
    assert '"2023-11-14"' in first.splitlines()[0]
    assert man_page(build_parser()[0]) == first


def test_completion_command_prints_the_generated_scripts(parser: argparse.ArgumentParser) -> None:
    for shell in ("bash", "zsh", "fish"):
        assert cli("completion", shell).stdout == completion_script(parser, shell)
    assert "invalid choice" in cli("completion", "tcsh", check=2).stderr


def _bash_complete(script: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    code = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _imaging_utility; "
            'printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "--norc", "-c", code], capture_output=True, text=True, timeout=30, check=True)
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completion(parser: argparse.ArgumentParser, tmp_path: Path) -> None:
    need_tools("bash")
    script = tmp_path / "c.bash"
    script.write_text(completion_script(parser, "bash"))
    top = _bash_complete(script, "imaging-utility", "")
    assert {c.name for c in commands(parser)} <= set(top)
    assert _bash_complete(script, "imaging-utility", "ser") == ["serve-proxy"]
    assert set(_bash_complete(script, "imaging-utility", "image", "--res")) == {"--resume", "--rescue"}
    assert _bash_complete(script, "imaging-utility", "serve-proxy", "--protocol", "") == ["nbd", "imdproxy"]
    assert _bash_complete(script, "imaging-utility", "completion", "") == ["bash", "zsh", "fish"]
    assert _bash_complete(script, "imaging-utility", "-v", "ntfs-webdav", "--par") == ["--partition"]
    # every option of every command completes
    for cmd in commands(parser):
        offered = set(_bash_complete(script, "imaging-utility", cmd.name, "-"))
        assert {f for o in cmd.options for f in o.flags} <= offered, cmd.name


def test_fish_completion(parser: argparse.ArgumentParser, tmp_path: Path) -> None:
    need_tools("fish")
    script = tmp_path / "imaging-utility.fish"
    script.write_text(completion_script(parser, "fish"))
    subprocess.run(["fish", "--no-execute", str(script)], check=True, timeout=30)

    def complete(line: str) -> list[str]:
        proc = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"],
                              capture_output=True, text=True, timeout=30, check=True)
        return [w.split("\t")[0] for w in proc.stdout.splitlines()]

    assert "serve-proxy" in complete("imaging-utility ser")
    assert {"--resume", "--rescue"} <= set(complete("imaging-utility image --res"))
    assert set(complete("imaging-utility serve-proxy --protocol ")) == {"nbd", "imdproxy"}
    assert set(complete("imaging-utility completion ")) == {"bash", "zsh", "fish"}


def test_zsh_completion(parser: argparse.ArgumentParser, tmp_path: Path) -> None:
    need_tools("zsh")
    fpath = tmp_path / "site-functions"
    fpath.mkdir()
    (fpath / "_imaging-utility").write_text(completion_script(parser, "zsh"))
    subprocess.run(["zsh", "-n", str(fpath / "_imaging-utility")], check=True, timeout=30)
    # compinit picks the function up by its #compdef line
    code = (f"fpath=({fpath} $fpath); autoload -Uz compinit; compinit -u -D; "
            "print -r -- ${_comps[imaging-utility]}")
    proc = subprocess.run(["zsh", "-f", "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "_imaging-utility"
