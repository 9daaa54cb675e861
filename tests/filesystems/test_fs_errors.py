"""Unknown, truncated, damaged or untrustworthy volumes: one clear ``UnsupportedError``, never a map.

Damage is done in memory (``BytesSource``) to freshly built small volumes.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fsbuild
from conftest import need_tools
from imaging_utility.blocks import BytesSource, WindowSource
from imaging_utility.errors import EXIT_NOT_FOUND, UnsupportedError
from imaging_utility.extents import AllocationMap
from imaging_utility.filesystems import _clusters_end, _probe, allocation_map, detect, exfat, ext, fat, ntfs

HINT = "image it in full without --used-only"


def mkfs(kind: str, size_mib: int, *cmd: str) -> Callable[[Path], bytes]:
    """A builder for an empty volume of ``size_mib`` MiB over random bytes (no root needed)."""

    def build(tmp: Path) -> bytes:
        need_tools(cmd[0])
        path = tmp / f"{kind}.img"
        fsbuild.random_image(path, size_mib)
        subprocess.run([*cmd, str(path)], check=True, capture_output=True)
        return path.read_bytes()

    return build


BUILDERS = {
    "ntfs": mkfs("ntfs", 4, "mkntfs", "-F", "-Q"),
    "ext4": mkfs("ext4", 4, "mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard"),
    "ext4-4k": mkfs("ext4-4k", 16, "mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-b", "4096", "-g", "1024"),
    # without bitmap checksums: a bitmap is then checked against its group's free count only
    "ext4-nocsum": mkfs("ext4-nocsum", 4, "mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard",
                        "-O", "^metadata_csum"),
    "ext4-4k-nocsum": mkfs("ext4-4k-nocsum", 16, "mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard",
                           "-O", "^metadata_csum", "-b", "4096", "-g", "1024"),
    "fat12": mkfs("fat12", 2, "mkfs.vfat", "-F", "12"),
    "fat16": mkfs("fat16", 16, "mkfs.vfat", "-F", "16"),
    "fat32": mkfs("fat32", 34, "mkfs.vfat", "-F", "32"),
    "exfat": mkfs("exfat", 4, "mkfs.exfat"),
}
_built: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], bytearray]:
    """``image(name)``: a fresh mutable copy of a small empty volume, built once per module."""
    tmp = tmp_path_factory.mktemp("fserr")

    def get(name: str) -> bytearray:
        if name not in _built:
            _built[name] = BUILDERS[name](tmp)
        return bytearray(_built[name])

    return get


def refused(data: bytes | bytearray, *needles: str) -> str:
    with pytest.raises(UnsupportedError) as exc:
        allocation_map(BytesSource(bytes(data)))
    msg = str(exc.value)
    assert exc.value.exit_code == EXIT_NOT_FOUND
    assert "\n" not in msg and HINT in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_random_bytes() -> None:
    data = random.Random(11).randbytes(1 << 20)
    assert detect(BytesSource(data)) is None
    refused(data, "no NTFS, ext2/3/4, FAT or exFAT filesystem found at offset 0", "first bytes:")


def test_zeros() -> None:
    assert detect(BytesSource(bytes(1 << 20))) is None
    refused(bytes(1 << 20), "only zero bytes")


def test_tiny_source() -> None:
    refused(b"\xeb", "no NTFS")
    refused(b"", "no NTFS")


def test_gpt_disk(tmp_path: Path) -> None:
    need_tools("sgdisk")
    disk = tmp_path / "disk.img"
    fsbuild.random_image(disk, 4)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:0", str(disk)], check=True, capture_output=True)
    refused(disk.read_bytes(), "GPT partition table", "'EFI PART' at offset 512")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_one_sector_short_is_mapped_with_one_warning(name: str, image: Callable[[str], bytearray]) -> None:
    """A dump missing its last sector (NTFS backup boot sector, FAT's last sector): every allocated
    cluster is still there, so the map is the full one cut at the source's end, with one warning."""
    data = image(name)
    full_info, full = allocation_map(BytesSource(bytes(data)))
    assert full_info.warnings == ()
    short = len(data) - 512
    info, amap = allocation_map(WindowSource(BytesSource(bytes(data)), 0, short))
    assert amap.size == short
    assert amap.used_in(0, short) == full.used_in(0, short)
    assert len(info.warnings) == 1 and "\n" not in info.warnings[0], info.warnings
    assert f"spans {len(data)} bytes but the source ends 512 bytes earlier" in info.warnings[0]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_truncated_before_an_allocated_cluster_is_refused(name: str, image: Callable[[str], bytearray]) -> None:
    data = image(name)
    _info, full = allocation_map(BytesSource(bytes(data)))
    found = _probe(BytesSource(bytes(data)))
    assert found is not None
    end = _clusters_end(found)  # past it only fixed structures: a backup boot sector, spare sectors
    assert end is not None
    last = max(e.offset for e in full if e.offset < end)
    cut = min(end, next(e.offset + e.length for e in full if e.offset == last)) - 512
    refused(bytes(data[:cut]), "past")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_larger_source_keeps_the_tail(name: str, image: Callable[[str], bytearray]) -> None:
    """Bytes past the filesystem's end are mapped as used, and the rest of the map is unchanged."""
    data = image(name)
    info, amap = allocation_map(BytesSource(bytes(data)))
    _, bigger = allocation_map(BytesSource(bytes(data) + b"\x01" * 12345))
    assert bigger.size == len(data) + 12345
    assert bigger.used_in(len(data), 12345) == [(len(data), 12345)]
    assert [e for e in bigger if e.offset < len(data)][:-1] == list(amap)[:-1]
    assert info.volume_size == len(data)


def test_ntfs_bitmap_record_zeroed(image: Callable[[str], bytearray]) -> None:
    data = image("ntfs")
    boot = ntfs.NtfsBoot.from_bytes(bytes(data[:512]))
    assert boot is not None
    rec = boot.mft_lcn * boot.cluster_size + ntfs.FILE_BITMAP * boot.record_size
    data[rec : rec + boot.record_size] = bytes(boot.record_size)
    refused(data, "NTFS boot sector found but $Bitmap is unreadable", f"{rec:#x}", "signature")


def test_ntfs_bitmap_zeroed(image: Callable[[str], bytearray]) -> None:
    """A $Bitmap whose contents were wiped marks $MFT free: refused, not an empty map."""
    data = image("ntfs")
    source = BytesSource(bytes(data))
    boot = ntfs.probe(source)
    assert boot is not None
    attr, _ = ntfs._bitmap_attr(source, boot)
    for lcn, count in attr.runs:
        assert lcn is not None
        data[lcn * boot.cluster_size : (lcn + count) * boot.cluster_size] = bytes(count * boot.cluster_size)
    refused(data, "marks $MFT's cluster")


def test_ntfs_boot_sector_damaged(image: Callable[[str], bytearray]) -> None:
    data = image("ntfs")
    data[0x0D] = 3  # SectorsPerCluster not a power of two
    refused(data, "NTFS boot sector at offset 0 is damaged")


@pytest.mark.parametrize("name", ["ext4", "ext4-4k"])
def test_ext_group_descriptors_zeroed_are_kept_whole(name: str, image: Callable[[str], bytearray]) -> None:
    """Zeroed descriptors fail their checksums: their groups are mapped whole, said in one warning."""
    data = image(name)
    sb = ext.ExtSuper.from_bytes(bytes(data[1024:2048]))
    assert sb is not None and sb.groups <= sb.desc_per_block
    gdt = sb.desc_block(0) * sb.block_size
    data[gdt : gdt + sb.block_size] = bytes(sb.block_size)
    info, amap = allocation_map(BytesSource(bytes(data)))
    assert amap.used_bytes == len(data)
    assert len(info.warnings) == 1 and "fails its checksum" in info.warnings[0], info.warnings


def test_ext_group_descriptors_zeroed_without_checksums(tmp_path: Path) -> None:
    """Without descriptor checksums nothing tells a zeroed descriptor from a real one but its pointers."""
    data = bytearray(mkfs("ext2", 4, "mke2fs", "-q", "-F", "-t", "ext2", "-E", "nodiscard")(tmp_path))
    sb = ext.ExtSuper.from_bytes(bytes(data[1024:2048]))
    assert sb is not None and sb.desc_checksum(0, bytes(sb.desc_size)) is None
    gdt = sb.desc_block(0) * sb.block_size
    data[gdt : gdt + sb.block_size] = bytes(sb.block_size)
    refused(data, "ext superblock found but group descriptor 0", f"{gdt:#x}", "damaged")


def test_ext_journal_needing_recovery_is_refused(image: Callable[[str], bytearray]) -> None:
    data = image("ext4")
    at = 1024 + 0x60
    data[at : at + 4] = (int.from_bytes(data[at : at + 4], "little") | ext.INCOMPAT_RECOVER).to_bytes(4, "little")
    refused(data, "journal needs recovery")


def test_ext_superblock_damaged(image: Callable[[str], bytearray]) -> None:
    data = image("ext4")
    data[1024 + 0x18] = 40  # s_log_block_size
    refused(data, "ext superblock at offset 1024 is damaged")


@pytest.mark.parametrize("name", ["fat12", "fat16", "fat32"])
def test_fat_first_fat_zeroed(name: str, image: Callable[[str], bytearray]) -> None:
    data = image(name)
    boot = fat.FatBoot.from_bytes(bytes(data[:512]))
    assert boot is not None
    at = boot.reserved_sectors * boot.bytes_per_sector
    data[at : at + boot.bytes_per_sector] = bytes(boot.bytes_per_sector)
    refused(data, "FAT copy 0", f"{at:#x}", "media byte")


def test_fat32_root_cluster_free(image: Callable[[str], bytearray]) -> None:
    data = image("fat32")
    boot = fat.FatBoot.from_bytes(bytes(data[:512]))
    assert boot is not None
    for copy in range(boot.num_fats):
        at = (boot.reserved_sectors + copy * boot.fat_sectors) * boot.bytes_per_sector + 4 * boot.root_cluster
        data[at : at + 4] = bytes(4)
    refused(data, "root directory's cluster")


def test_exfat_root_directory_zeroed(image: Callable[[str], bytearray]) -> None:
    data = image("exfat")
    boot = exfat.ExfatBoot.from_bytes(bytes(data[:512]))
    assert boot is not None
    at = boot.cluster_offset(boot.root_cluster)
    data[at : at + boot.cluster_size] = bytes(boot.cluster_size)
    refused(data, "no Allocation Bitmap entry")


def test_exfat_bitmap_zeroed(image: Callable[[str], bytearray]) -> None:
    data = image("exfat")
    source = BytesSource(bytes(data))
    boot = exfat.probe(source)
    assert boot is not None
    vol = exfat._Volume(source, boot)
    for _, etype, entry in vol.root_entries():
        if etype == exfat.ENTRY_BITMAP:
            _, first, length = exfat.DIR_ENTRY.unpack(entry)
            at = boot.cluster_offset(first)
            data[at : at + length] = bytes(length)
    refused(data, "Allocation Bitmap", "free")


def test_exfat_boot_checksum(image: Callable[[str], bytearray]) -> None:
    data = image("exfat")
    data[0x1F0] ^= 0xFF  # boot code: only the checksum notices
    refused(data, "boot checksum")


def test_two_signatures_are_ambiguous(image: Callable[[str], bytearray]) -> None:
    data = image("fat16")
    data[1024:2048] = image("ext4")[1024:2048]
    with pytest.raises(UnsupportedError, match=r"both (fat16 and ext4|ext4 and fat16) signatures"):
        detect(BytesSource(bytes(data)))
    refused(data, "cannot tell which is real")


def metadata_areas(name: str, vol: bytes) -> list[tuple[int, int]]:
    """Where the structures the map is built from live: the first 64 KiB, plus the MFT (NTFS)
    or the start of the cluster heap (exFAT: bitmap, up-case table, root directory)."""
    areas = [(0, min(len(vol), 64 * 1024))]
    source = BytesSource(vol)
    if name == "ntfs":
        nboot = ntfs.probe(source)
        assert nboot is not None
        areas.append((nboot.mft_lcn * nboot.cluster_size, 16 * nboot.record_size))
    elif name == "exfat":
        xboot = exfat.probe(source)
        assert xboot is not None
        areas.append((xboot.heap, 8 * xboot.cluster_size))
    return areas


@pytest.mark.parametrize("name", sorted(BUILDERS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_metadata_gives_a_map_or_unsupported(
    name: str, image: Callable[[str], bytearray], data: st.DataObject
) -> None:
    """Random byte changes in the metadata: a map or ``UnsupportedError``, never another exception."""
    vol = image(name)
    areas = metadata_areas(name, bytes(vol))
    for _ in range(data.draw(st.integers(1, 40))):
        start, length = data.draw(st.sampled_from(areas))
        vol[data.draw(st.integers(start, start + length - 1))] = data.draw(st.integers(0, 255))
    try:
        info, amap = allocation_map(BytesSource(bytes(vol)))
    except UnsupportedError as e:
        assert "\n" not in str(e) and HINT in str(e)
    else:
        assert isinstance(amap, AllocationMap) and amap.size == len(vol)
        # a filesystem may claim more than the source holds only with the warning that says so
        assert info.volume_size <= len(vol) or any("but the source ends" in w for w in info.warnings), info


@pytest.mark.parametrize("opts", [(), ("-O", "^metadata_csum,uninit_bg")], ids=["metadata_csum", "uninit_bg"])
def test_ext_descriptor_checksum_mismatch(opts: tuple[str, ...], tmp_path: Path) -> None:
    """A descriptor whose fields still look plausible but fail their checksum: its group is kept whole."""
    data = bytearray(mkfs("ext4", 4, "mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", *opts)(tmp_path))
    sb = ext.ExtSuper.from_bytes(bytes(data[1024:2048]))
    assert sb is not None and sb.desc_checksum(0, bytes(sb.desc_size)) is not None
    info, intact = allocation_map(BytesSource(bytes(data)))
    assert info.warnings == ()
    at = sb.desc_block(0) * sb.block_size + 0x0C  # group 0's bg_free_blocks_count_lo
    data[at] ^= 0x01
    info, amap = allocation_map(BytesSource(bytes(data)))
    assert len(info.warnings) == 1 and "group 0: descriptor at offset" in info.warnings[0], info.warnings
    group0 = sb.group_blocks(0) * sb.block_size + sb.first_data_block * sb.block_size
    assert amap.used_in(0, group0) == [(0, group0)]
    assert amap.used_bytes > intact.used_bytes


@pytest.mark.parametrize("name", ["ext4-nocsum", "ext4-4k-nocsum"])
def test_ext_bitmap_marking_less_than_its_free_count_says(name: str, image: Callable[[str], bytearray]) -> None:
    """A zeroed block bitmap says "all free" while the descriptor's free count says otherwise: the
    group is kept whole, said in one warning, never mapped as empty.  (With metadata_csum the bitmap's
    checksum says it first: ``test_ext_bitmap.py``.)"""
    data = image(name)
    sb = ext.ExtSuper.from_bytes(bytes(data[1024:2048]))
    assert sb is not None
    table = ext._read_groups(BytesSource(bytes(data)), sb)
    at = table.block_bitmap[0] * sb.block_size
    data[at : at + sb.block_size] = bytes(sb.block_size)
    info, amap = allocation_map(BytesSource(bytes(data)))
    assert len(info.warnings) == 1 and "group 0: its bitmap marks 0 clusters in use" in info.warnings[0]
    end = (sb.first_data_block + sb.group_blocks(0)) * sb.block_size
    assert amap.used_in(0, end) == [(0, end)]


def test_untrusted_groups_of_a_partition_are_said_for_the_whole_disk(image: Callable[[str], bytearray],
                                                                      tmp_path: Path) -> None:
    """A whole-disk used-only map (``image --used-only`` of a disk, ``backup-disk``) says, per partition,
    what each filesystem's map had to keep whole, as a single-volume image does."""
    from imaging_utility.ops.diskmap import plan_disk

    need_tools("sfdisk")
    data = image("ext4")
    sb = ext.ExtSuper.from_bytes(bytes(data[1024:2048]))
    assert sb is not None
    gdt = sb.desc_block(0) * sb.block_size
    data[gdt : gdt + sb.block_size] = bytes(sb.block_size)
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(disk)], input=b"label: dos\n2048,8192,83\n",
                   check=True, capture_output=True)
    with open(disk, "r+b") as f:
        f.seek(1 << 20)
        f.write(data)
    plan = plan_disk(BytesSource(disk.read_bytes()))
    said = [w for w in plan.warnings if "fails its checksum" in w]
    assert len(said) == 1 and said[0].startswith("partition 1: "), plan.warnings
    assert plan.partitions[0].used is not None and plan.partitions[0].used.used_bytes == len(data)
