"""tshark's expert findings as the TAP tests judge them (tickwire.sim.tcp_lab.tshark_findings)."""

import subprocess

from tickwire.sim import tcp_lab


def test_the_kernels_rfc_1624_checksum_note_is_not_a_finding_but_the_cards_is(monkeypatch):
    out = "\n".join([
        f"8105\t{tcp_lab.PEER_IP}\tTCP Checksum 0xffff instead of 0x0000 (see RFC 1624)",
        f"8106\t{tcp_lab.CARD_IP}\tTCP Checksum 0xffff instead of 0x0000 (see RFC 1624)",
        f"9000\t{tcp_lab.PEER_IP}\tBad checksum [should be 0x1234]",
        f"9001\t{tcp_lab.CARD_IP}\tThis frame is a (suspected) retransmission",
        ""])
    seen = []

    def run(*command, check=True):
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, stdout=out, stderr="")
    monkeypatch.setattr(tcp_lab, "run", run)
    assert tcp_lab.tshark_findings("capture.pcap") == out.splitlines()[1:4]
    assert "ip.src" in seen[0] and "tcp.check_checksum:TRUE" in seen[0]
