"""The download wing of cfd.core."""
