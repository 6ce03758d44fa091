"""Parallel Ethernet CRC-32 (IEEE 802.3) over 1..8 bytes per cycle, generated as XOR networks."""

from functools import lru_cache

from amaranth.hdl import Cat, Signal, Module, Const

__all__ = ["CRC_INIT", "CRC_RESIDUE", "crc32_matrix", "crc32_step", "crc32_update"]

CRC_POLY_REFLECTED = 0xEDB88320
CRC_INIT = 0xFFFFFFFF
#: Register value after running the CRC over a frame followed by its correct FCS.
CRC_RESIDUE = 0xDEBB20E3


@lru_cache(maxsize=None)
def crc32_matrix(nbytes: int) -> tuple[tuple[int, int], ...]:
    """For each of the 32 output bits: (mask over the 32 CRC bits, mask over the 8*nbytes data bits).

    The CRC is the reflected form used on the wire (bit 0 of each byte first), without the
    final inversion: ``next = step(crc, data)``.
    """
    # Symbolic state: every bit is a pair of masks (crc inputs, data inputs).
    state = [(1 << i, 0) for i in range(32)]
    for byte in range(nbytes):
        for bit in range(8):
            d = (0, 1 << (8 * byte + bit))
            fb = (state[0][0] ^ d[0], state[0][1] ^ d[1])
            nxt = [state[i + 1] if i < 31 else (0, 0) for i in range(32)]
            for i in range(32):
                if (CRC_POLY_REFLECTED >> i) & 1:
                    nxt[i] = (nxt[i][0] ^ fb[0], nxt[i][1] ^ fb[1])
            state = nxt
    return tuple(state)


def crc32_step(crc: int, data: bytes) -> int:
    """Software model of the same step (used by tests of the matrices)."""
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (CRC_POLY_REFLECTED if crc & 1 else 0)
    return crc


def _xor_bits(crc, data, masks):
    crc_mask, data_mask = masks
    width = data.shape().width
    return (crc & Const(crc_mask, 32)).xor() ^ (data & Const(data_mask & ((1 << width) - 1), width)).xor()


def crc32_update(m: Module, crc, data, nbytes, *, max_bytes: int = 8):
    """A 32-bit signal: ``crc`` advanced over the first ``nbytes`` (1..max_bytes) bytes of ``data``.

    ``nbytes`` outside 1..max_bytes leaves the CRC unchanged. Purely combinational.
    """
    out = Signal(32)
    with m.Switch(nbytes):
        for n in range(1, max_bytes + 1):
            with m.Case(n):
                masks = crc32_matrix(n)
                m.d.comb += out.eq(Cat(*[_xor_bits(crc, data[:8 * n], masks[i]) for i in range(32)]))
        with m.Default():
            m.d.comb += out.eq(crc)
    return out
