"""The manifest wing of cfd.core."""
