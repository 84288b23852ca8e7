"""The store wing of cfd.core."""
