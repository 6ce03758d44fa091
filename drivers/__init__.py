"""tickwire.drivers."""
