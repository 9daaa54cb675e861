"""The man page and the bash/zsh/fish completions, generated from the argparse parser.

A command added to ``parser.COMMANDS`` appears in all four without further work: its help line, usage,
description, options (with their value names and choices) and the examples of its epilog.

    python -m imaging_utility.cli.docgen man > imaging-utility.1
    python -m imaging_utility.cli.docgen bash|zsh|fish

The man page's date is ``SOURCE_DATE_EPOCH`` when set (reproducible builds), else today.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field

from .. import __version__
from ..errors import (
    EXIT_CANNOT_RESUME,
    EXIT_CORRUPT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_NO_SPACE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_PERMISSION,
    EXIT_REFUSED,
    EXIT_USAGE,
)

PROG = "imaging-utility"
EXIT_CODES = [
    (EXIT_OK, "success"),
    (EXIT_INTERNAL, "internal error (a bug): one line plus \"rerun with --verbose\""),
    (EXIT_USAGE, "usage error: bad option or argument"),
    (EXIT_PARTIAL, "finished, but some source sectors were unreadable (--rescue) or some files failed"),
    (EXIT_NOT_FOUND, "not found or not usable: source, target, image, partition, a missing dependency"),
    (EXIT_PERMISSION, "permission denied"),
    (EXIT_IO, "I/O error reading the source or writing the target"),
    (EXIT_NO_SPACE, "no space left on the target (the partial image resumes with --resume)"),
    (EXIT_CORRUPT, "image invalid or corrupt, or verification failed"),
    (EXIT_REFUSED, "refused for safety: target too small, device mounted or busy, would overwrite"),
    (EXIT_CANNOT_RESUME, "cannot resume: the partial image does not match this source or these options"),
    (EXIT_INTERRUPTED, "interrupted (SIGINT/SIGTERM): the partial image is kept and --resume continues it"),
]
# option values that name files (completed as paths); other values get no completion but their choices
_PATH_METAVARS = {"PATH", "FILE", "F", "DIR", "DEST", "IMAGE", "SOURCE", "TARGET", "MOUNTPOINT"}


@dataclass
class Option:
    flags: list[str]
    help: str
    metavar: str | None  # None: a flag without a value
    choices: list[str] | None
    repeat: bool

    @property
    def is_path(self) -> bool:
        return self.metavar in _PATH_METAVARS


@dataclass
class Command:
    name: str
    help: str
    parser: argparse.ArgumentParser
    options: list[Option] = field(default_factory=list)
    positionals: list[Option] = field(default_factory=list)  # flags empty; repeat = nargs + or *
    aliases: list[str] = field(default_factory=list)


def _option(action: argparse.Action) -> Option:
    takes_value = action.nargs != 0
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if takes_value and metavar is None:
        metavar = action.dest.upper() if action.option_strings else action.dest
    choices = [str(c) for c in action.choices] if action.choices else None
    help_text = "" if action.help in (None, argparse.SUPPRESS) else str(action.help)
    repeat = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    return Option(list(action.option_strings), help_text, metavar if takes_value else None, choices, repeat)


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """Every subcommand in ``--help`` order; ``alias of X`` entries are folded into X's aliases."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: str(c.help or "") for c in sub._choices_actions}
    found: dict[str, Command] = {}
    for name, sp in sub.choices.items():
        target = helps.get(name, "").removeprefix("alias of ")
        if target != helps.get(name) and target in found:
            found[target].aliases.append(name)
            continue
        cmd = Command(name, helps.get(name, ""), sp)
        for action in sp._actions:
            (cmd.options if action.option_strings else cmd.positionals).append(_option(action))
        found[name] = cmd
    return list(found.values())


def top_options(parser: argparse.ArgumentParser) -> list[Option]:
    return [_option(a) for a in parser._actions if a.option_strings]


# --- man page -------------------------------------------------------------------------------------------

def _roff(text: str) -> str:
    """Escape text for roff: backslashes, hyphens (so options copy and paste as typed), leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    return re.sub(r"\s*\n\s*", " ", usage)


def _man_option(opt: Option) -> list[str]:
    value = f" \\fI{_roff(opt.metavar)}\\fR" if opt.metavar else ""
    if opt.flags:
        names = ", ".join(f"\\fB{_roff(f)}\\fR{value}" for f in opt.flags)
    else:
        names = f"\\fI{_roff(opt.metavar or '')}\\fR"
    text = opt.help
    if opt.choices and "{" not in text:
        text += ("; " if text else "") + "one of: " + ", ".join(opt.choices)
    return [".TP", names, _roff(text) if text else ""]


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch) if epoch and epoch.isdigit() else None))


def man_page(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    out = [
        f'.TH IMAGING\\-UTILITY 1 "{_date()}" "{PROG} {_roff(__version__)}" "User Commands"',
        ".nh", ".ad l",  # no hyphenation, ragged right: options and paths stay whole
        ".SH NAME", f"{PROG} \\- {_roff((parser.description or '').rstrip('.').lower())}",
        ".SH SYNOPSIS",
        f".B {PROG}", ".I COMMAND", "[\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]", ".br",
        f".B {PROG}", "[\\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR]",
        ".SH DESCRIPTION",
        _roff("Image a disk, partition or file into a compressed, verifiable, random-access image that is a "
              "plain seekable zstd stream (zstd -dc restores it without this tool); resume after any "
              "interruption; image only the allocated clusters of known filesystems; serve images "
              "read-only over NBD, FUSE and WebDAV; list and extract files without mounting."),
        ".PP", _roff(parser.epilog or ""),
        ".SH OPTIONS",
    ]
    for opt in top_options(parser):
        out += _man_option(opt)
    out += [".SH COMMANDS"]
    for cmd in cmds:
        out += [".TP 14", f"\\fB{_roff(cmd.name)}\\fR", _roff(cmd.help)]
    for cmd in cmds:
        out += [f'.SH "{PROG.upper()} {_roff(cmd.name.upper())}"', _roff(_usage(cmd.parser))]
        if cmd.parser.description:
            out += [".PP", _roff(cmd.parser.description)]
        if cmd.aliases:
            out += [".PP", _roff("Also available as: " + ", ".join(cmd.aliases) + ".")]
        if cmd.positionals:
            out += [".SS Arguments"]
            for opt in cmd.positionals:
                out += _man_option(opt)
        out += [".SS Options"]
        for opt in cmd.options:
            out += _man_option(opt)
        epilog = (cmd.parser.epilog or "").strip("\n")
        if epilog:
            body = epilog.split("\n", 1)[1] if epilog.lower().startswith("examples:") else epilog
            out += [".SS Examples", ".nf", ".RS 4", _roff(textwrap.dedent(body)), ".RE", ".fi"]
    out += [".SH EXIT STATUS"]
    for code, meaning in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out += [".SH SEE ALSO", "\\fBzstd\\fR(1), \\fBnbdinfo\\fR(1), \\fBnbdcopy\\fR(1), \\fBfusermount3\\fR(1)",
            ".PP", _roff("The README and docs/ of the source distribution: the image format specification, "
                         "file extraction and performance figures.")]
    return "\n".join(line for line in out if line != "") + "\n"


# --- completions ----------------------------------------------------------------------------------------

def _short(text: str) -> str:
    """The first clause of a help text, for completion menus."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.split(r"(?<=[a-z0-9)])[.;](?:\s|$)", text, maxsplit=1)[0]
    return text if len(text) <= 70 else text[:67].rstrip() + "..."


def _names(cmds: list[Command]) -> list[str]:
    return [n for c in cmds for n in (c.name, *c.aliases)]


def bash_script(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    top = " ".join(f for o in top_options(parser) for f in o.flags)
    lines = [
        f"# bash completion for {PROG} {__version__} (generated from its argument definitions)",
        "_imaging_utility() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in -*) ;; *) cmd="${COMP_WORDS[i]}"; break ;; esac',
        "    done",
        '    if [[ -z "$cmd" ]]; then',
        f'        mapfile -t COMPREPLY < <(compgen -W "{" ".join(_names(cmds))} {top}" -- "$cur")',
        "        return",
        "    fi",
        '    local opts="" values="" positional=""',
        '    case "$cmd" in',
    ]
    for cmd in cmds:
        flags = " ".join(f for o in cmd.options for f in o.flags)
        lines.append(f'        {"|".join((cmd.name, *cmd.aliases))})')
        lines.append(f'            opts="{flags}"')
        valued = [(o, f) for o in cmd.options if o.metavar for f in o.flags]
        choice_cases = [f'                {f}) values="{" ".join(o.choices)}" ;;' for o, f in valued if o.choices]
        plain = [f for o, f in valued if not o.choices]
        if choice_cases or plain:
            lines.append('            case "$prev" in')
            lines += choice_cases
            if plain:
                lines.append(f"                {'|'.join(plain)}) return ;;")
            lines.append("            esac")
        pos_choices = [c for o in cmd.positionals for c in (o.choices or [])]
        if pos_choices:
            lines.append(f'            positional="{" ".join(pos_choices)}"')
        lines.append("            ;;")
    lines += [
        "    esac",
        '    if [[ -n "$values" ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$values" -- "$cur")',
        '    elif [[ "$cur" == -* ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")',
        '    elif [[ -n "$positional" ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$positional" -- "$cur")',
        "    fi",
        "}",
        f"complete -o default -o bashdefault -F _imaging_utility {PROG}",
    ]
    return "\n".join(lines) + "\n"


def _zsh_quote(text: str) -> str:
    return text.replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zsh_spec(opt: Option) -> list[str]:
    action = ""
    if opt.metavar:
        values = f"({' '.join(opt.choices)})" if opt.choices else ("_files" if opt.is_path else " ")
        action = f":{_zsh_quote(opt.metavar)}:{values}"
    star = "*" if opt.repeat else ""
    # a flag spelt with "=" (--used-only=auto) would read as an option taking a value: left out
    return [f"'{star}{flag}[{_zsh_quote(_short(opt.help))}]{action}'" for flag in opt.flags if "=" not in flag]


def zsh_script(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    lines = [f"#compdef {PROG}", f"# zsh completion for {PROG} {__version__} (generated from its argument definitions)",
             "", "_imaging_utility() {", "    local curcontext=\"$curcontext\" state line", "    local -a commands",
             "    commands=("]
    for cmd in cmds:
        for name in (cmd.name, *cmd.aliases):
            help_text = cmd.help if name == cmd.name else f"alias of {cmd.name}"
            lines.append(f"        '{_zsh_quote(name)}:{_zsh_quote(_short(help_text))}'")
    lines += ["    )", "    _arguments -C \\"]
    for opt in top_options(parser):
        lines += [f"        '(- *){s[1:]} \\" for s in _zsh_spec(opt)]
    lines += ["        '1: :->command' \\", "        '*:: :->args'", "    case $state in",
              "        command) _describe -t commands 'imaging-utility command' commands ;;",
              "        args)", "            case $words[1] in"]
    for cmd in cmds:
        specs = [s for o in cmd.options for s in _zsh_spec(o)]
        for pos in cmd.positionals:
            values = f"({' '.join(pos.choices)})" if pos.choices else "_files"
            prefix = "*:" if pos.repeat else ":"
            specs.append(f"'{prefix}{_zsh_quote(pos.metavar or '')}:{values}'")
        lines.append(f"                {'|'.join((cmd.name, *cmd.aliases))})")
        lines.append("                    _arguments \\")
        lines += [f"                        {s} \\" for s in specs[:-1]]
        lines.append(f"                        {specs[-1]} ;;")
    lines += ["            esac ;;", "    esac", "}", "", '_imaging_utility "$@"']
    return "\n".join(lines) + "\n"


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish_script(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    names = " ".join(_names(cmds))
    lines = [f"# fish completion for {PROG} {__version__} (generated from its argument definitions)",
             f"complete -c {PROG} -f"]
    for opt in top_options(parser):
        lines.append(f"complete -c {PROG} -n 'not __fish_seen_subcommand_from {names}' {_fish_flags(opt)}")
    for cmd in cmds:
        for name in (cmd.name, *cmd.aliases):
            help_text = cmd.help if name == cmd.name else f"alias of {cmd.name}"
            lines.append(f"complete -c {PROG} -n 'not __fish_seen_subcommand_from {names}' -a {name} "
                         f"-d {_fish_quote(_short(help_text))}")
        cond = f"-n '__fish_seen_subcommand_from {' '.join((cmd.name, *cmd.aliases))}'"
        for opt in cmd.options:
            if all("=" not in f for f in opt.flags):  # --used-only=auto is not a fish option name
                lines.append(f"complete -c {PROG} {cond} {_fish_flags(opt)}")
        for pos in cmd.positionals:
            if pos.choices:
                lines.append(f"complete -c {PROG} {cond} -x -a {_fish_quote(' '.join(pos.choices))}")
            else:
                lines.append(f"complete -c {PROG} {cond} -F")
    return "\n".join(lines) + "\n"


def _fish_flags(opt: Option) -> str:
    parts = []
    for flag in opt.flags:
        if flag.startswith("--"):
            parts.append(f"-l {flag[2:]}")
        elif len(flag) == 2:
            parts.append(f"-s {flag[1]}")
        else:
            parts.append(f"-o {flag[1:]}")
    if opt.metavar:
        if opt.choices:
            parts.append(f"-x -a {_fish_quote(' '.join(opt.choices))}")
        else:
            parts.append("-r -F" if opt.is_path else "-x")
    if opt.help:
        parts.append(f"-d {_fish_quote(_short(opt.help))}")
    return " ".join(parts)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    return {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[shell](parser)


def main(argv: list[str] | None = None) -> int:
    from .parser import build_parser

    what = (argv if argv is not None else sys.argv[1:]) or ["man"]
    parser, _ = build_parser()
    sys.stdout.write(man_page(parser) if what[0] == "man" else completion_script(parser, what[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
