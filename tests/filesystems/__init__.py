"""Tests of imaging_utility.filesystems (allocation maps for used-only imaging)."""
