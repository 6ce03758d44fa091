"""Python model of 1 GbE framing on RGMII: preamble, SFD, FCS, and the nibbles on each clock edge."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocols.net import fcs

__all__ = ["PREAMBLE", "SFD", "RgmiiCycle", "gmii_frame", "rgmii_cycles", "gmii_from_rgmii",
           "GmiiFrame", "parse_gmii"]

PREAMBLE = 0x55
SFD = 0xD5
#: Preamble bytes before the SFD on the wire (IEEE 802.3 clause 35).
PREAMBLE_LENGTH = 7


@dataclass(frozen=True)
class RgmiiCycle:
    """One RGMII clock: RX/TX_CTL and the data nibble on the rising and on the falling edge."""

    ctl_rise: int
    ctl_fall: int
    data_rise: int
    data_fall: int


def gmii_frame(frame: bytes, *, preamble: int = PREAMBLE_LENGTH, with_fcs: bool = True) -> bytes:
    """The bytes of ``frame`` on GMII: preamble, SFD, the frame, its FCS (unless already there)."""
    if not 0 <= preamble <= PREAMBLE_LENGTH:
        raise ValueError(f"preamble must be 0..{PREAMBLE_LENGTH} bytes, not {preamble!r}")
    return bytes([PREAMBLE] * preamble + [SFD]) + frame + (fcs(frame) if with_fcs else b"")


def rgmii_cycles(data: bytes, *, errors: frozenset[int] = frozenset()) -> list[RgmiiCycle]:
    """The RGMII clocks that carry ``data`` with TX_EN / RX_DV high: the low nibble on the rising
    edge, the high nibble on the falling edge; CTL is EN on the rising edge and EN xor ER on the
    falling edge. Byte positions in ``errors`` carry ER."""
    return [RgmiiCycle(1, 1 ^ (i in errors), b & 0xF, b >> 4) for i, b in enumerate(data)]


def idle_cycles(n: int) -> list[RgmiiCycle]:
    """``n`` inter-frame clocks (EN and ER low, data zero)."""
    return [RgmiiCycle(0, 0, 0, 0)] * n


def gmii_from_rgmii(cycles: list[RgmiiCycle]) -> list[tuple[int, int, int]]:
    """(byte, en, er) per clock, as the receiver rebuilds GMII from the two edges."""
    return [(c.data_rise | c.data_fall << 4, c.ctl_rise, c.ctl_rise ^ c.ctl_fall) for c in cycles]


@dataclass(frozen=True)
class GmiiFrame:
    """One frame found on GMII: the bytes between SFD and end of EN, and what was wrong with it."""

    preamble: int          # 0x55 bytes before the SFD
    data: bytes            # after the SFD, FCS included
    error: bool            # ER seen inside the frame

    @property
    def fcs_ok(self) -> bool:
        return len(self.data) >= 4 and fcs(self.data[:-4]) == self.data[-4:]

    @property
    def payload(self) -> bytes:
        """The frame without its FCS."""
        return self.data[:-4]


def parse_gmii(stream: list[tuple[int, int, int]]) -> list[GmiiFrame]:
    """Split a GMII byte stream (byte, en, er) into frames at EN; each must open with 0x55 bytes
    and the SFD, or ``ValueError`` says where it does not."""
    frames = []
    current: list[tuple[int, int]] = []
    for i, (byte, en, er) in enumerate(stream + [(0, 0, 0)]):
        if en:
            current.append((byte, er))
            continue
        if not current:
            continue
        preamble = 0
        while preamble < len(current) and current[preamble][0] == PREAMBLE:
            preamble += 1
        if preamble >= len(current) or current[preamble][0] != SFD:
            raise ValueError(f"frame ending at clock {i} has no SFD after its preamble: "
                             f"{bytes(b for b, _ in current[:16]).hex()}")
        body = current[preamble + 1:]
        frames.append(GmiiFrame(preamble, bytes(b for b, _ in body),
                                any(er for _, er in current)))
        current = []
    return frames
