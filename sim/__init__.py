"""tickwire.sim."""
