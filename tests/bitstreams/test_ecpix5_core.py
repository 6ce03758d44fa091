"""The ECPIX-5's core-domain design (``Ecpix5Core``: the appliance in the board's configuration
with the management port on the appliance's MACs) in the Amaranth simulator: register requests
in through the feed MAC, replies out through the order MAC, with feed traffic around them."""

import zlib

import pytest
from amaranth.sim import Simulator

from tickwire.bitstreams.ecpix5 import ECPIX5_APPLIANCE, ECPIX5_MAC_ADDRESS, Ecpix5Core
from tickwire.hdl.csr import MAGIC
from tickwire.hdl.rgmii import IDLE_WORD
from tickwire.protocols.management import (APPLIED, READ, WRITE, ManagementRequest, decode_reply,
                                           encode_request, frame_kind)

from test_rgmii import _xgmii_words  # noqa: E402  (the XGMII frame encoder of the RGMII tests)

CARD = ECPIX5_MAC_ADDRESS.to_bytes(6, "big")
HOST = bytes.fromhex("02000000000a")


def xgmii_frame(body: bytes) -> list[tuple[int, int]]:
    """``body`` padded to 60 bytes, its FCS, as XGMII (data, ctrl) words with idles after it."""
    body = body.ljust(60, b"\0")
    return _xgmii_words(body + zlib.crc32(body).to_bytes(4, "little")) + [(IDLE_WORD, 0xFF)] * 2


def frames_from_xgmii(words) -> list[bytes]:
    """Frames (FCS checked and removed) from the transmit side's (data, ctrl) words."""
    frames, current = [], None
    for data, ctrl in words:
        lanes = [((data >> 8 * k) & 0xFF, (ctrl >> k) & 1) for k in range(8)]
        if current is None:
            if lanes[0] == (0xFB, 1):
                current = bytearray()
            continue
        for byte, is_ctrl in lanes:
            if is_ctrl:
                assert byte == 0xFD, f"control character 0x{byte:02x} inside a frame"
                assert zlib.crc32(bytes(current[:-4])) == int.from_bytes(current[-4:], "little")
                frames.append(bytes(current[:-4]))
                current = None
                break
            current.append(byte)
    return frames


@pytest.fixture(scope="module")
def core():
    return Ecpix5Core(appliance_kwargs=ECPIX5_APPLIANCE, mac_address=ECPIX5_MAC_ADDRESS)


def test_requests_through_the_feed_mac_replies_through_the_order_mac(core):
    amap = core.appliance.bank.address_map()
    magic, frames_ok = amap["id.magic"]["address"], amap["mac_rx.frames_ok"]["address"]
    kill = amap["risk.kill"]["address"]
    feed_frame = bytes.fromhex("01005e000001") + HOST + b"\x08\x00" + bytes(range(46))  # not ours
    sent = [("request", ManagementRequest(READ, 7, magic)),
            ("feed", feed_frame),
            ("request", ManagementRequest(WRITE, 8, kill, 1)),
            ("request", ManagementRequest(READ, 9, kill)),
            ("feed", feed_frame),
            ("request", ManagementRequest(READ, 10, frames_ok))]
    out = []
    sim = Simulator(core)
    sim.add_clock(1e-8)

    async def drive(ctx):
        ctx.set(core.rx.data, IDLE_WORD)
        ctx.set(core.rx.ctrl, 0xFF)
        for _ in range(20):
            await ctx.tick()
        for kind, item in sent:
            body = encode_request(item, destination=CARD, source=HOST) if kind == "request" else item
            for data, ctrl in xgmii_frame(body):
                ctx.set(core.rx.data, data)
                ctx.set(core.rx.ctrl, ctrl)
                await ctx.tick()
            ctx.set(core.rx.data, IDLE_WORD)
            ctx.set(core.rx.ctrl, 0xFF)
            for _ in range(150):
                await ctx.tick()

    async def watch(ctx):
        async for _, _, data, ctrl in ctx.tick().sample(core.tx.data, core.tx.ctrl):
            out.append((data, ctrl))

    sim.add_testbench(drive)
    sim.add_process(watch)
    sim.run_until(1e-8 * (20 + len(sent) * 170))

    replies = [decode_reply(f)[2] for f in frames_from_xgmii(out) if frame_kind(f) == "reply"]
    assert [(r.sequence, r.opcode, r.address, r.status) for r in replies] == [
        (7, READ, magic, APPLIED), (8, WRITE, kill, APPLIED), (9, READ, kill, APPLIED),
        (10, READ, frames_ok, APPLIED)]
    assert replies[0].data == MAGIC and replies[1].data == 1 and replies[2].data == 1
    # Every frame on the port reached the feed MAC: the four requests and the two feed frames.
    assert replies[3].data == 6


def test_core_needs_the_shared_macs():
    with pytest.raises(ValueError, match="feed_frame_tap=True and port_frames=True"):
        Ecpix5Core(appliance_kwargs={**ECPIX5_APPLIANCE, "port_frames": False},
                   mac_address=ECPIX5_MAC_ADDRESS)
