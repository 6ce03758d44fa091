"""tickwire.hdl."""
