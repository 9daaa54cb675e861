"""``serve-proxy``: serve an image read-only over NBD (default) or the ImDisk/AIM proxy protocol.

Protocols: NBD per NetworkBlockDevice/nbd ``doc/proto.md`` (``serve/nbd``); IMDPROXY per LTRData/ImDisk
``inc/imdproxy.h`` (``serve/imdproxy.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ._source_args import add_set_options, open_reader, warn_table

if TYPE_CHECKING:
    from ..blocks import BlockSource

EXAMPLES = """\
examples:
  imaging-utility serve-proxy disk.img.zst
      NBD on 127.0.0.1:10809; the whole disk is the default export, partitions are p1, p2, ...
  nbdinfo --list nbd://127.0.0.1:10809/
  nbdcopy nbd://127.0.0.1:10809/p2 part2.raw
  qemu-img convert -O qcow2 nbd://127.0.0.1:10809/ disk.qcow2
  imaging-utility serve-proxy disk.img.zst --socket /run/disk.sock
      then: nbdinfo 'nbd+unix:///?socket=/run/disk.sock'
  imaging-utility serve-proxy disk.img.zst --partition 2 --port 10810
  imaging-utility serve-proxy server.img.zst
      an LVM2 physical volume (or a partition holding one): each logical volume is an export too,
      named as in /dev/mapper: nbdcopy nbd://127.0.0.1:10809/vg0-root root.raw
  imaging-utility serve-proxy disk.img.zst --protocol imdproxy --host 0.0.0.0 --port 9000
      on Windows: aim_cli --mount --readonly --connect=HOST:9000
                  (or imdisk -a -t proxy -o ip,ro -f HOST:9000 -m X:)
  imaging-utility serve-proxy disk.img.zst --offset 1M --length 512M
  imaging-utility serve-proxy disk.img.zst --processes 1
      serve each connection with threads of one process (default: one process per CPU)
  imaging-utility serve-proxy disk.img.zst --max-connections 16 --idle-timeout 60
      at most 16 clients; when all 16 are taken, one silent for 60 s makes room for a new one
"""

DEFAULT_PORTS = {"nbd": 10809, "imdproxy": 9000}
MAX_PROCESSES = 8
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_processes() -> int:
    """One process per CPU.  Measured on 2 CPUs (random 4 KiB reads, fio iodepth 16): 1 process 17,300/s,
    2 processes 31,700/s (p99 0.9 ms), 3 processes 30,900/s (p99 3.8 ms: a process descheduled while it
    holds the receive lock stalls the others)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_PROCESSES, cpus))


def parse_size(text: str) -> int:
    """``4096``, ``1M``, ``2G`` (binary suffixes, optional ``iB``/``B``) → bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _SUFFIXES else ""
    try:
        value = int(t[: len(t) - len(unit)]) * _SUFFIXES[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4096, 64K, 1M, 2G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must not be negative: {text!r}")
    return value


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = subparsers.add_parser(
        "serve-proxy", parents=[parent], help="serve an image read-only over NBD or IMDPROXY",
        description="Serve the raw bytes of an image read-only over NBD (nbdinfo, nbdcopy, qemu-img, "
                    "nbd-client) or the ImDisk / Arsenal Image Mounter proxy protocol. There is no "
                    "authentication and no TLS: keep the default loopback address or use --socket.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="image to serve")
    p.add_argument("--protocol", choices=("nbd", "imdproxy"), default="nbd", help="default: nbd")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default: 10809 for nbd, 9000 for imdproxy; 0 = any)")
    p.add_argument("--socket", metavar="PATH", help="listen on a Unix socket instead of TCP")
    p.add_argument("--partition", type=int, metavar="N", help="serve only partition N (Linux numbering)")
    p.add_argument("--offset", type=parse_size, metavar="N", help="serve a window starting at byte N")
    p.add_argument("--length", type=parse_size, metavar="N", help="window length (default: to the end)")
    add_set_options(p)
    p.add_argument("--processes", type=int, metavar="N", default=None,
                   help=f"NBD: processes serving each connection (default: one per CPU, at most "
                        f"{MAX_PROCESSES}; here {default_processes()}); 1 = threads of one process")
    p.add_argument("--max-connections", type=int, metavar="N", default=128,
                   help="clients served at once (default: 128); when all are taken, a new client gets the place "
                        "of one idle for --idle-timeout, else a clear refusal")
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS", default=300,
                   help="a TCP client that has sent nothing for this long gives up its place when the server is "
                        "full and another client connects (default: 300; 0 = never)")
    return ["serve-proxy"]


def select_exports(image: BlockSource, args: argparse.Namespace) -> dict[str, BlockSource]:
    """The default export ``""`` (whole image, partition or window); for a whole disk also each volume in it
    by its Linux name (``p1``, ``ldm_vol_GROUP_NAME``, ``imsm_NAME``, ``vg0-root``: ``ops.volumes``)."""
    from ..blocks import WindowSource
    from ..filesystems.imsm import check_table
    from ..ops.volumes import lv_volumes, named_volumes
    from ..partitions import partition_source, read_partitions

    if args.partition is not None and (args.offset is not None or args.length is not None):
        raise UsageError("--partition cannot be combined with --offset/--length")
    if args.partition is not None:
        table = read_partitions(image)
        check_table(image, table.get(args.partition).end)  # a firmware RAID member: its table is the array's
        return {"": (part := partition_source(image, args.partition, table)), **lv_volumes({"": part})}
    if args.offset is not None or args.length is not None:
        offset = args.offset or 0
        length = args.length if args.length is not None else image.size - offset
        if offset + length > image.size or length <= 0:
            raise UsageError(f"--offset {offset} --length {length} is outside the image ({image.size} bytes)")
        return {"": (window := WindowSource(image, offset, length)), **lv_volumes({"": window})}
    return {"": image, **named_volumes(image)}


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..image.reader import DEFAULT_CACHE_BYTES
    from ..serve.imdproxy import ImdproxyServer
    from ..serve.nbd import NbdServer
    from ._serving import serve_until_signalled

    port = args.port if args.port is not None else DEFAULT_PORTS[args.protocol]
    processes = args.processes if args.processes is not None else default_processes()
    if processes < 1 or processes > 64:
        raise UsageError(f"--processes {processes}: use 1 to 64")
    if args.max_connections < 1 or args.max_connections > 4096:
        raise UsageError(f"--max-connections {args.max_connections}: use 1 to 4096")
    if args.idle_timeout < 0:
        raise UsageError(f"--idle-timeout {args.idle_timeout:g}: use 0 (never) or more seconds")
    if args.protocol != "nbd":
        if args.processes is not None:
            raise UsageError("--processes applies to --protocol nbd only")
        processes = 1
    # With several processes each decodes what it serves: a read-ahead would decode chunks another
    # process serves (measured: 1 MiB sequential reads 940 MiB/s with it, 1,469 MiB/s without).
    # The chunk cache is divided among the processes: memory stays what one process would use.
    with open_reader(args, readahead=0 if processes > 1 else 4,
                    cache_bytes=max(8 << 20, DEFAULT_CACHE_BYTES // processes)) as image:
        warn_table(image)
        exports = select_exports(image, args)
        server: NbdServer | ImdproxyServer
        if args.protocol == "nbd":
            server = NbdServer(exports, host=args.host, port=port, unix_path=args.socket, processes=processes,
                               max_connections=args.max_connections, idle_timeout=args.idle_timeout)
        else:
            server = ImdproxyServer(exports[""], host=args.host, port=port, unix_path=args.socket,
                                    max_connections=args.max_connections, idle_timeout=args.idle_timeout)
        with server:
            if not args.socket and not _is_loopback(args.host):
                print(f"imaging-utility: warning: listening on {args.host}, not loopback: anyone who can "
                      "reach this port can read the whole image (no authentication, no TLS)", file=sys.stderr)
            if isinstance(server.address, str):
                where = f"nbd+unix:///?socket={server.address}" if args.protocol == "nbd" else server.address
            else:
                host, bound = server.address
                host = f"[{host}]" if ":" in host else host
                where = f"nbd://{host}:{bound}/" if args.protocol == "nbd" else f"{host}:{bound}"
            names = ", ".join(repr(n) for n in exports) if args.protocol == "nbd" else "whole source"
            print(f"serving {args.image} read-only over {args.protocol} at {where} (exports: {names}); "
                  "Ctrl-C to stop", flush=True)
            if serve_until_signalled(server.serve_forever, server.shutdown):
                print("imaging-utility: stopped", file=sys.stderr)
    return 0
