"""tickwire.host."""
