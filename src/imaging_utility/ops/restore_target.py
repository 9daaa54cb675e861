"""Before a restore writes anything: is the target safe, large enough, and what exactly is it?

``inspect_target`` applies the refusals ``restore`` applies (mounted or busy,
too small, an existing file without ``--force``) *before* anyone is asked to
confirm, and describes the target the way the CLI's question and the GUI's
confirmation both show it: the device, its model, serial and transport, and the
partitions and filesystems about to be overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..devices.blockdev import kernel_name
from ..devices.inventory import find_block_device
from ..devices.mounts import check_target_safe
from ..devices.source import FileSource
from ..errors import RefusedError
from ..units import human_bytes
from .inventory import Volume, list_volumes, probe
from .restore import target_kind
from .target import check_device_target


@dataclass
class RestoreTarget:
    path: str
    kind: str  # "device", "file" (exists) or "new"
    size: int | None  # the device's or existing file's size
    lines: list[str]  # what will be overwritten, for a confirmation
    name: str = ""  # a device's kernel name (``sdc``): what the user types to confirm, as for the command

    @property
    def needs_confirmation(self) -> bool:
        return self.kind == "device"


def inspect_target(target: str, image_size: int, *, force: bool = False) -> RestoreTarget:
    """Describe ``target``; ``RefusedError`` (exit 9) when restoring ``image_size`` bytes onto it must not happen."""
    check_target_safe(target)
    kind = target_kind(target)
    if kind == "new":
        return RestoreTarget(target, kind, None, [f"{target}: a new file of {human_bytes(image_size)} (sparse)"])
    with FileSource(target) as src:
        size = src.size
    if kind == "file":
        if not force:
            raise RefusedError(f"{target} already exists; use --force to overwrite it")
        return RestoreTarget(target, kind, size, [f"{target}: existing file of {human_bytes(size)}, replaced"])
    check_device_target(target)  # holders (LVM, RAID), another program's exclusive open: as the command
    if size < image_size:
        raise RefusedError(f"{target} holds {size} bytes, the image needs {image_size}; choose a larger device")
    return RestoreTarget(target, kind, size, describe_device(target, size, image_size), kernel_name(target))


def describe_device(target: str, size: int, image_size: int | None) -> list[str]:
    """What the device holds now, then (``image_size`` given) how much of it a plain restore overwrites."""
    dev = find_block_device(target)
    head = f"{target}: {human_bytes(size)} block device"
    vol: Volume | None = None
    if dev is not None:
        extra = [x for x in (dev.model, f"serial {dev.serial}" if dev.serial else None, dev.transport) if x]
        if extra:
            head += " (" + ", ".join(extra) + ")"
        if dev.is_disk:
            vol = probe(list_volumes([dev])[0])
    lines = [head]
    for part in (vol.partitions if vol is not None else []):
        fs = part.fs or "no known filesystem"
        label = f" '{part.label}'" if part.label else ""
        lines.append(f"  {part.name}: {human_bytes(part.size)}, {fs}{label}")
    if vol is not None and not vol.partitions and vol.fs:
        label = f" '{vol.label}'" if vol.label else ""
        lines.append(f"  holds {vol.fs}{label}")
    if image_size is not None:
        lines.append(f"Every byte of the first {human_bytes(image_size)} of {target} is overwritten.")
    return lines
