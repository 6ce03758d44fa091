"""tickwire.hdl."""

from . import _rtlil_speed

_rtlil_speed.install()
