"""Entry point: argv → command module → exit code.  The only place that turns errors into exit codes.

The parser (``parser.py``) is built only when a command or ``--help`` needs it: ``imaging-utility
--version`` imports neither argparse nor any command module.  Everything a command needs is imported
when it runs, so the start-up costs only what the command uses.
"""

from __future__ import annotations

import sys

from .. import interrupts
from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NOT_FOUND, Error, Interrupted


def _setup_logging(verbose: bool, log_file: str | None) -> None:
    import logging

    log = logging.getLogger("imaging_utility")
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


def main(argv: list[str] | None = None) -> int:
    """Run one command.  As the program (no ``argv``), signals are ours until the process ends (see
    ``interrupts``): one that comes after the command is done changes nothing, and an interrupted run
    ends with exit 130 at once, without waiting for threads; as a library call (``argv`` given) the
    process's handlers are put back as they were."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        from .version import version_lines

        sys.stdout.write("\n".join(version_lines()) + "\n")
        return 0
    saved: interrupts.Handlers = {}
    try:
        try:
            saved = interrupts.install()
            code = _run(argv)
        except Exception as e:  # before the command's own handling starts (argparse, imports)
            if not interrupts.caused_by_signal(e):  # e.g. argparse's own cleanup failing on the interrupt
                raise
            code = _interrupted()
        except KeyboardInterrupt:
            code = _interrupted()
        finally:
            if program:
                interrupts.ignore_late()
            else:
                interrupts.restore(saved)
    except KeyboardInterrupt:  # the one signal landed between two of the lines above
        code = _interrupted()
        if program:
            interrupts.ignore_late()
    if program and code == EXIT_INTERRUPTED:
        interrupts.exit_interrupted()
    return code


def _interrupted() -> int:
    print("imaging-utility: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _run(argv: list[str]) -> int:
    from .parser import parse

    args, module = parse(argv)  # exits on --help and on a usage error
    import logging

    from .deps import missing_module_message
    from .output import shown

    log = logging.getLogger("imaging_utility")
    _tune_malloc()
    verbose = bool(args.verbose)
    _setup_logging(verbose, getattr(args, "log_file", None))
    if getattr(args, "profile", None) or getattr(args, "endpoint_url", None):
        from ..storage import configure_s3

        configure_s3(args.profile, args.endpoint_url)
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        return _interrupted()
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
        if interrupts.caused_by_signal(e):
            return _interrupted()
        if verbose:
            import traceback

            traceback.print_exc()
        log.debug("internal error", exc_info=True)
        print(f"imaging-utility: internal error: {type(e).__name__}: {shown(str(e))} (rerun with --verbose)",
              file=sys.stderr)
        return EXIT_INTERNAL
