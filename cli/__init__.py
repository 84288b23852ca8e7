"""cfd.cli."""
