"""MBR/GPT partition tables (``table.py``)."""

from __future__ import annotations

from .table import Partition, PartitionTable, partition_source, read_partitions

__all__ = ["Partition", "PartitionTable", "partition_source", "read_partitions"]
