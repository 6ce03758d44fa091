"""tickwire.bitstreams."""
