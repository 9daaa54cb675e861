"""MBR/GPT partition tables: parsing (``table.py``) and rewriting for another disk size (``rewrite.py``)."""

from __future__ import annotations

from .table import GptInfo, Partition, PartitionTable, partition_source, read_partitions

__all__ = ["GptInfo", "Partition", "PartitionTable", "partition_source", "read_partitions"]
