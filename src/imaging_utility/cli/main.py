"""Entry point: argv → command module → exit code.  The only place that turns errors into exit codes.

Each command lives in its own module with ``register(subparsers)`` and
``run(args) -> int``; ``COMMANDS`` lists them in ``--help`` order.  Building the parser imports every
command module, so a command module imports at its top only what its arguments need (argparse,
``errors``, ``output``) and everything else inside ``run``, so that ``--help`` and ``--version`` load
no dependency (tests/release/test_release_version.py checks it).  The man page and the shell
completions are generated from this parser (``docgen.py``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import signal
import sys
from types import ModuleType

from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_USAGE, Error, Interrupted
from ._source_args import rewrite_set_dir
from .deps import missing_module_message
from .output import shown
from .version import VersionAction

COMMANDS = ["image", "backup_disk", "info", "verify", "restore", "export", "ls", "extract", "serve", "mount",
            "webdav", "completion"]

log = logging.getLogger("imaging_utility")


# Options of the original Windows tool, which took everything as options.
_ORIGINAL_OPTIONS = {
    "--in": "the image is the first argument here (e.g. 'imaging-utility ls IMAGE PATH')",
    "--out": "the destination is the last argument here (e.g. 'imaging-utility image SOURCE DEST')",
    "--out-dir": "the destination is the last argument here (e.g. 'imaging-utility extract IMAGE PATH DEST')",
    "--path": "paths inside the image are arguments here (e.g. 'imaging-utility extract IMAGE /Users/ann DEST')",
    "--device": "the device is the first argument here (e.g. 'imaging-utility image /dev/sdb sdb.img.zst')",
    "--all-blocks": "every byte is imaged unless --used-only is given",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {self._explain(message)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    def _explain(self, message: str) -> str:
        """argparse's message, with a suggestion for a mistyped option."""
        if not message.startswith("unrecognized arguments: "):
            return message
        words = message.removeprefix("unrecognized arguments: ").split()
        option = next((w.split("=", 1)[0] for w in words if w.startswith("-") and w != "-"), None)
        if option is None:
            return f"unexpected argument(s): {' '.join(words)}"
        if option in _ORIGINAL_OPTIONS:
            return f"unknown option {option}: {_ORIGINAL_OPTIONS[option]}"
        close = difflib.get_close_matches(option, list(self._option_string_actions), n=2, cutoff=0.7)
        if close:
            return f"unknown option {option}; did you mean {' or '.join(close)}?"
        return f"unknown option {option} (see '{self.prog} --help')"


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (``--verbose``, ``--log-file``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug log on stderr")
    p.add_argument("--log-file", metavar="PATH", help="append a debug log to PATH")
    s3 = p.add_argument_group("s3:// images (credentials from AWS_* variables or ~/.aws/credentials)")
    s3.add_argument("--profile", metavar="NAME", help="AWS profile of ~/.aws/credentials and ~/.aws/config")
    s3.add_argument("--endpoint-url", metavar="URL",
                    help="S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL or AWS)")
    return p


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = _Parser(
        prog="imaging-utility",
        description="Compressed, verifiable, random-access, resumable disk images.",
        epilog="Run 'imaging-utility COMMAND --help' for a command's options and examples. "
               "Options may come before or after the arguments.",
    )
    parser.add_argument("--version", action=VersionAction,
                        help="print the version of the tool, the image format, zstd and Python, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug log on stderr")
    parser.add_argument("--log-file", metavar="PATH", help="append a debug log to PATH")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules: dict[str, ModuleType] = {}
    parent = common_options()
    for name in COMMANDS:
        mod = importlib.import_module(f".{name}", __package__)
        for cmd in mod.register(sub, parent):
            modules[cmd] = mod
    return parser, modules


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name."""
    for action in parser._actions:  # argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse(argv: list[str]) -> tuple[argparse.Namespace, ModuleType]:
    """``argv`` → (arguments, command module).  Options before the command are the global ones
    (``-v``, ``--log-file``, ``--version``, ``--help``); a command takes its options and arguments in
    any order.  Usage errors exit 2 with the usage of the command they concern."""
    parser, modules = build_parser()
    commands = _commands(parser)
    argv = rewrite_set_dir(argv, commands)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        i += 2 if argv[i] == "--log-file" else 1
    top = parser.parse_args(argv[:i])
    if i >= len(argv):
        parser.error("give a COMMAND (see 'imaging-utility --help')")
    name, rest = argv[i], argv[i + 1 :]
    if name not in commands:
        parser.error(unknown_command(name, list(commands)))
    args = commands[name].parse_intermixed_args(rest)
    args.command = name
    args.verbose = bool(getattr(args, "verbose", False) or top.verbose)
    args.log_file = getattr(args, "log_file", None) or top.log_file
    return args, modules[name]


def unknown_command(name: str, commands: list[str]) -> str:
    """The error for an unknown command: where the original tool's name went, or the close matches."""
    from .original import pointer

    hint = pointer(name, commands)
    if hint:
        return f"'{name}' is a command of the original Windows tool; here: {hint}"
    close = difflib.get_close_matches(name, commands, n=3, cutoff=0.5)
    if close:
        return f"unknown command '{name}'; did you mean {' or '.join(close)}?"
    return f"unknown command '{name}'; the commands are: {', '.join(commands)}"


def _setup_logging(verbose: bool, log_file: str | None) -> None:
    log.setLevel(logging.DEBUG if (verbose or log_file) else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        h: logging.Handler = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        log.addHandler(h)
    if log_file:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)


def _tune_malloc() -> None:
    """Keep freed chunk-sized buffers in the heap instead of unmapping them (glibc only).

    Every decoded or compressed chunk is a fresh ~1 MiB bytes object; above glibc's default mmap
    threshold each one is a new mapping whose pages fault in and are zeroed again.  Measured on the
    benchmark corpus: ~190,000 page faults and 2.5 s of system time per 2 GiB restored, gone with this.
    Memory stays bounded by the pipelines' own limits.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args, module = parse(sys.argv[1:] if argv is None else argv)
    _tune_malloc()
    verbose = bool(args.verbose)
    _setup_logging(verbose, getattr(args, "log_file", None))
    if getattr(args, "profile", None) or getattr(args, "endpoint_url", None):
        from ..storage import configure_s3

        configure_s3(args.profile, args.endpoint_url)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):  # a closed terminal or Ctrl-\\ as Ctrl-C
        if signal.getsignal(sig) != signal.SIG_IGN:  # what nohup ignores stays ignored
            signal.signal(sig, _on_sigterm)
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("imaging-utility: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as e:
        print(f"imaging-utility: {shown(str(e))}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Error as e:
        if verbose:
            import traceback

            traceback.print_exc()
        log.debug("error", exc_info=True)
        print(f"imaging-utility: error: {shown(str(e))}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as e:
        # A dependency left out of the installation (or of a standalone build): name what to install.
        if verbose:
            import traceback

            traceback.print_exc()
        log.debug("missing module", exc_info=True)
        print(f"imaging-utility: error: {missing_module_message(e, args.command)}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except Exception as e:
        if verbose:
            import traceback

            traceback.print_exc()
        log.debug("internal error", exc_info=True)
        print(f"imaging-utility: internal error: {type(e).__name__}: {shown(str(e))} (rerun with --verbose)",
              file=sys.stderr)
        return EXIT_INTERNAL
