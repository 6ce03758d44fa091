"""tickwire.protocols."""
