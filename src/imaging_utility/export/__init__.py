"""Virtual-disk writers over a ``BlockSource``: VHDX, VHD, qcow2, VMDK, sparse raw (DESIGN §8)."""
