"""The simulated card (``tickwire sim serve``, the Verilated appliance) on a veth pair through
sim/mgmt_bridge.py, reached over the management protocol by the dpdk driver (DPDK's
net_af_packet on the other end, in a process of its own) and the ethmgmt driver: identity,
register writes and reads, host orders whose events come back as event frames in order, a lost
request and a lost reply retried without a second order, and ``tickwire status`` of an agent whose
card is behind the dpdk driver.

The card is built once per session (minutes after a change of the gateware) and served from one
process for the module."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tickwire.drivers import DriverError, open_driver
from tickwire.drivers.dpdk import call_in_process, dpdk_available
from tickwire.drivers.ethmgmt import EthManagementDriver
from tickwire.host.card import Card
from tickwire.protocols.events import EventFlag, EventType
from tickwire.protocols.management import WRITE, frame_kind
from tickwire.sim import defaults
from tickwire.sim.defaults import DEFAULT_REGISTERS
from tickwire.sim.mgmt_bridge import DEFAULT_CARD_MAC, ManagementBridge
from tickwire.sim.netns import inside

_missing = dpdk_available()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET, DPDK and network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="no 'ip' command (iproute2) for veth pairs"),
]
needs_dpdk = pytest.mark.skipif(_missing is not None, reason=f"{_missing} (run 'make dpdk' as root)")

HOST_MAC = "02:00:00:00:00:0a"
NETNS = f"twbridge{os.getpid()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tickwire.sim.card import build_card_harness, served
    build_card_harness(announce=lambda text: print(text, file=sys.stderr))
    with served(tmp_path_factory.mktemp("sim")) as path:
        card = Card.open({"driver": "sim", "socket": path, "timeout": 30})
        try:
            defaults.apply_defaults(card)
            card.driver.settle()
        finally:
            card.close()
        yield path


@pytest.fixture(scope="module")
def veth():
    run = lambda *args: subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: E731
    try:
        run("netns", "add", NETNS)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot make a network namespace: {e.stderr.decode().strip()}")
    try:
        run("-n", NETNS, "link", "add", "twh", "address", HOST_MAC, "type", "veth", "peer", "name", "twc")
        for name in ("twh", "twc"):
            run("-n", NETNS, "link", "set", name, "up")
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


class Losses:
    """What the bridge loses on purpose: a predicate the test sets, and what it lost."""

    def __init__(self):
        self.rule = None
        self.lost = []

    def __call__(self, direction, frame):
        if self.rule is not None and self.rule(direction, frame):
            self.lost.append((direction, bytes(frame)))
            return True
        return False


@pytest.fixture(scope="module")
def bridge(server, veth):
    driver = open_driver({"driver": "sim", "socket": server, "timeout": 30})
    losses = Losses()
    with inside(veth):
        bridge = ManagementBridge(driver, "twc", drop=losses)
    bridge.losses = losses
    with bridge:
        yield bridge
    driver.close()


def run_in_dpdk_process(function, *args, timeout=120):
    """``function(card, *args)`` with a Card over the dpdk driver, in a process of its own."""
    # The simulated card answers in milliseconds (more on a loaded machine): retry after 250 ms.
    options = {"interface": "twh", "card_mac": DEFAULT_CARD_MAC, "timeout": 10, "idle_us": 20,
               "retry_interval": 0.25}
    try:
        return call_in_process(_with_card, function, *args, options=options, netns=NETNS,
                               timeout=timeout)
    except DriverError as e:
        pytest.fail(str(e))


def _with_card(driver, function, *args):
    card = Card(driver)
    return function(card, *args)


def _orders(card, count):
    """Identity (Card's check on connect), a register written and read, ``count`` host orders;
    the events that came back and the driver's counters."""
    card.trigger.rule_0_threshold = 123_4567
    threshold = card.trigger.rule_0_threshold
    card.trigger.rule_0_threshold = DEFAULT_REGISTERS["trigger.rule_0_threshold"]
    magic = card.id.magic
    for k in range(count):
        card.submit_order(side="S", quantity=10 + k, price=189_0000, session=0, slot=0,
                          time_in_force=ord("0"), display=ord("Y"), capacity=ord("A"),
                          intermarket_sweep_eligibility=ord("N"), cross_type=ord("N"))
    got, deadline = [], time.monotonic() + 30
    while len([e for e in got if e.type in OUTCOMES]) < count and time.monotonic() < deadline:
        got += card.events(timeout=0.2)
    time.sleep(0.3)
    got += card.events(timeout=0.2)
    client = card.driver.client
    return {"threshold": threshold, "magic": magic,
            "events": [(int(e.type), e.sequence, int(e.flags), e.get("quantity")) for e in got],
            "retries": client.retries, "duplicates": client.duplicates,
            "event_frames": client.event_frames, "event_frames_lost": client.event_frames_lost}


#: What a host order comes back as: sent, or refused by risk (the orders add up across the tests).
OUTCOMES = (EventType.ORDER_SENT, EventType.RISK_REJECT)


def _outcomes(result):
    """(sequence, quantity) of the host orders' events, sent or refused."""
    return [(s, q) for t, s, f, q in result["events"] if t in OUTCOMES and f & EventFlag.HOST]


@needs_dpdk
def test_registers_and_order_events_through_dpdk(bridge):
    result = run_in_dpdk_process(_orders, 5)
    assert result["magic"] == int.from_bytes(b"TWIR", "big")
    assert result["threshold"] == 123_4567
    assert [q for _, q in _outcomes(result)] == [10, 11, 12, 13, 14], result
    sequences = [s for _, s, _, _ in result["events"]]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))   # in order
    assert result["event_frames_lost"] == 0 and result["event_frames"] >= 1
    assert result["duplicates"] <= result["retries"]      # retries only when a reply was late


@needs_dpdk
def test_lost_request_and_lost_reply_are_retried_without_a_second_order(bridge):
    """The link loses the first copy of the first request that writes host_submit, and the
    card's first reply to the second one (the card applied it): both are retried with the same
    sequence and the card sends one order each."""
    from tickwire.host.regmap import RegisterMap
    address = RegisterMap.load()["order_entry.host_submit"].address
    counts = {"in": 0, "out": 0}

    def rule(direction, frame):
        if frame_kind(frame) not in ("request", "reply") or frame[15] & 0x7F != WRITE \
                or int.from_bytes(frame[18:20], "big") != address:
            return False
        counts[direction] += 1
        return (direction, counts[direction]) in (("in", 1), ("out", 2))
    bridge.losses.rule = rule
    try:
        result = run_in_dpdk_process(_orders, 2)
    finally:
        bridge.losses.rule = None
    assert [d for d, _ in bridge.losses.lost] == ["in", "out"]
    assert [q for _, q in _outcomes(result)] == [10, 11], result    # one order per submit
    assert result["retries"] >= 2 and result["duplicates"] >= 1
    assert result["event_frames_lost"] == 0


def test_ethmgmt_reaches_the_simulated_card(bridge):
    from tickwire.host.regmap import Registers, RegisterMap, check_identity
    with inside(NETNS):
        driver = EthManagementDriver("twh", DEFAULT_CARD_MAC, timeout=10)
    with driver:
        check_identity(Registers(RegisterMap.load(), driver))
        card = Card(driver)
        card.trigger.rule_0_threshold = 7_0000
        assert card.trigger.rule_0_threshold == 7_0000
        card.trigger.rule_0_threshold = DEFAULT_REGISTERS["trigger.rule_0_threshold"]


STATUS_CONFIG = """
[card]
driver = "dpdk"
interface = "twh"
card_mac = "{card_mac}"
timeout = 10
idle_us = 20
"""


@needs_dpdk
def test_tickwire_status_through_the_dpdk_driver(bridge, tmp_path):
    """``tickwire run --config X`` (in the namespace, card behind the dpdk driver), then
    ``tickwire status``: the agent answers with the card's clock read through DPDK."""
    config = tmp_path / "dpdk.toml"
    config.write_text(STATUS_CONFIG.format(card_mac=DEFAULT_CARD_MAC))
    control = str(tmp_path / "control.sock")
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, sys.executable, "-m", "tickwire.host.cli", "run",
         "--config", str(config), "--journal", str(tmp_path / "journal"), "--control", control,
         "--no-apply"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(control):
            if agent.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the agent did not start: {(tmp_path / 'agent.log').read_text()}")
            time.sleep(0.1)
        status = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "status", "--control",
                                 control, "--json"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        answer = json.loads(status.stdout)
        assert answer["driver"] == "dpdk" and answer["card"].startswith("<Card")
        assert "DpdkDriver" in answer["card"] or "dpdk" in answer["card"].lower()
        assert answer["cycles"] > 0
        table = subprocess.run([sys.executable, "-m", "tickwire.host.cli", "status", "--control",
                                control], capture_output=True, text=True, timeout=60)
        assert table.returncode == 0 and "cycles" in table.stdout
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()
