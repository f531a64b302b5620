"""Synthetic Windows test guests: real NTFS, real registry hives, a real BCD store, INF files, a WinRE wim."""
