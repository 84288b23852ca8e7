"""cfd.agent."""
