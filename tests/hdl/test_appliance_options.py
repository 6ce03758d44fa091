"""The appliance's size options (a board's smaller build): what each leaves out, and that every
register the smaller build keeps is at the same address as in the default build."""

import pytest

from tickwire.hdl.top import Appliance


def test_one_line_no_engine_keeps_every_address():
    full, small = Appliance(), Appliance(tcp_engine=False, feed_lines=1, max_open_gaps=1)
    full_map, small_map = full.bank.address_map(), small.bank.address_map()
    assert small_map and all(full_map[name] == record for name, record in small_map.items())
    gone = {name.split(".")[0] for name in full_map} - {name.split(".")[0] for name in small_map}
    assert gone == {"mac_rx_b", "net_rx_b", "mac_rx_order", "tcp"}
    members = set(small.signature.members)
    assert not members & {"feed_rx_b", "order_rx", "i_host_data", "i_host_frame", "o_payload",
                          "o_host_frame"}
    assert {"feed_rx", "i_inbound", "order_tx", "csr"} <= members
    assert small.market_data.moldudp64.max_open_gaps == 1
    assert small.tcp is None and small.market_data.mac_rx_b is None


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="needs the TCP engine"):
        Appliance(transport="tcp", tcp_engine=False)
    with pytest.raises(ValueError, match="without the TCP engine"):
        Appliance(tcp_engine=False, tcp={"buffer_words": 256})
    with pytest.raises(ValueError, match="lines must be 1 or 2"):
        Appliance(feed_lines=3)
    with pytest.raises(ValueError, match="max_open_gaps"):
        Appliance(max_open_gaps=0)
