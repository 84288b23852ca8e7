"""The sync wing of cfd.core."""
