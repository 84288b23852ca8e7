"""cfd.hooks."""
