"""rdma driver: window addressing and word packing, errors without pyverbs or a device, and a
real round trip against an in-process card endpoint where an RDMA device exists."""

import sys
import threading

import pytest

from tickwire.drivers import DriverError, DriverUnavailable, open_driver
from tickwire.drivers.rdma import RegisterWindow, import_pyverbs, list_devices

CONFIG = {"driver": "rdma", "address": "127.0.0.1", "window_address": 0x1000,
          "window_rkey": 0x1234, "window_bytes": 4096, "timeout": 2}


def test_word_addresses_map_into_the_window():
    window = RegisterWindow(0x7F00_0000_1000, 0xABCD, 16384)
    assert window.words == 4096
    assert window.remote_address(0) == 0x7F00_0000_1000
    assert window.remote_address(0x181) == 0x7F00_0000_1000 + 0x604
    with pytest.raises(DriverError, match="beyond the 16384-byte register window"):
        window.remote_address(4096)
    with pytest.raises(DriverError, match="not a 32-bit word address"):
        window.remote_address(-1)
    assert RegisterWindow.pack(0x54574952) == b"RIWT"
    assert RegisterWindow.unpack(b"RIWT") == 0x54574952


@pytest.mark.parametrize("address, rkey, size, message", [
    (0x1002, 1, 64, "whole 32-bit words"),
    (0x1000, 1, 6, "whole 32-bit words"),
    (0x1000, 1 << 32, 64, "window_rkey"),
    (-4, 1, 64, "window_address"),
    ((1 << 64) - 4, 1, 64, "wraps"),
])
def test_bad_windows(address, rkey, size, message):
    with pytest.raises(DriverError, match=message):
        RegisterWindow(address, rkey, size)


def test_without_pyverbs_the_driver_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyverbs", None)  # makes "import pyverbs" fail
    with pytest.raises(DriverUnavailable, match="python3-pyverbs and run 'make rdma'"):
        open_driver(CONFIG)


def test_without_a_device_the_driver_is_unavailable():
    try:
        import_pyverbs()
    except DriverUnavailable as e:
        pytest.skip(str(e))
    try:
        devices = list_devices()
    except DriverUnavailable as e:
        assert "no RDMA device found by pyverbs' device list" in str(e)
        with pytest.raises(DriverUnavailable, match="no RDMA device found"):
            open_driver(CONFIG)
    else:
        with pytest.raises(DriverUnavailable, match="no RDMA device 'nosuch'"):
            open_driver({**CONFIG, "device": "nosuch"})
        assert devices


def test_bad_options_are_refused_before_any_device_is_touched():
    with pytest.raises(DriverError, match="power of two"):
        open_driver({**CONFIG, "ring_entries": 3})
    with pytest.raises(DriverError, match="unknown option 'rkey'"):
        open_driver({**CONFIG, "rkey": 1})


def test_register_round_trip_over_rdma():
    """An in-process passive endpoint stands in for the card: its register window is a memory
    region the driver reads and writes with RDMA."""
    try:
        list_devices()
    except DriverUnavailable as e:
        pytest.skip(str(e))
    pv = import_pyverbs()
    e = pv.enums
    port = "17471"
    info = pv.cmid.AddrInfo(src="0.0.0.0", src_service=port, port_space=e.RDMA_PS_TCP,
                            flags=e.RAI_PASSIVE)
    listener = pv.cmid.CMID(creator=info)
    listener.listen()
    card = {}

    def accept():
        conn = listener.get_request()
        pd = pv.pd.PD(conn)
        cq = pv.cq.CQ(conn.context, 4)
        conn.create_qp(pv.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                                        cap=pv.qp.QPCap(max_send_wr=4, max_recv_wr=4)))
        conn.accept(pv.cmid.ConnParam(resources=1, depth=1))
        card.update(conn=conn, pd=pd, cq=cq)

    window = pv.mr.MR(pv.pd.PD(listener), 4096, e.IBV_ACCESS_LOCAL_WRITE
                      | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE)
    window.write((0x54574952).to_bytes(4, "little"), 4)
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    with open_driver({**CONFIG, "port": int(port), "window_address": window.buf,
                      "window_rkey": window.rkey, "window_bytes": 4096}) as driver:
        assert driver.read(0) == 0x54574952
        driver.write(5, 0xCAFEF00D)
        assert window.read(4, 20) == (0xCAFEF00D).to_bytes(4, "little")
    thread.join(timeout=5)
