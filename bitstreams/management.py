"""Register access over Ethernet for the boards: the management port lives in
:mod:`tickwire.hdl.management` (frame layouts in :mod:`tickwire.protocols.management`); the board
builds import it from here."""

from __future__ import annotations

from ..hdl.management import ManagementPort

__all__ = ["ManagementPort"]
