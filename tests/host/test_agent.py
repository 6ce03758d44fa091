"""The agent against a card model in this file (no Verilator): events journalled, exposure
updates written to the card, reconciliation alerts, the control socket, and the agent's event and
journal rates."""

import collections
import socket
import threading
import time

import pytest

from tickwire.host.agent import Agent, AgentOptions, AlertCode
from tickwire.host.card import Card
from tickwire.host.control import AgentNotRunning, ControlError, request
from tickwire.host.journal import JournalReader, RecordType
from tickwire.host.regmap import RegisterMap
from tickwire.protocols import ouch, soupbintcp
from tickwire.protocols.events import Event, EventFlag, EventType
from tickwire.protocols.net import fcs
from tickwire.protocols.risk import ExposureUpdateKind, RejectReason
from tickwire.sim.feed import udp_frame


class ModelDriver:
    """Word-addressed registers with selector-indexed tables, events and order frames queued by
    the test, and the risk stage's exposure for host exposure updates."""

    name = "model"
    capabilities = frozenset({"registers", "events", "frames"})
    send_ports = ("feed_a", "inject")

    def __init__(self, regmap):
        self.regmap = regmap
        self.words = collections.defaultdict(int)
        self.tables = collections.defaultdict(int)
        self.selector_of = {}
        for r in regmap:
            if r.indexed_by:
                for k in range((r.width + 31) // 32):
                    self.selector_of[r.address + k] = regmap[r.indexed_by].address
        self.events_queue = collections.deque()
        self.frames = collections.deque()
        self.exposure_updates = []
        self.closed = False

    def read(self, address):
        selector = self.selector_of.get(address)
        if selector is not None:
            return self.tables[(address, self.words[selector])]
        return self.words[address]

    def write(self, address, value):
        selector = self.selector_of.get(address)
        if selector is not None:
            self.tables[(address, self.words[selector])] = value
        else:
            self.words[address] = value
        if address == self.regmap["order_entry.exposure_submit"].address and value:
            self._exposure()

    def _get(self, name, index=None):
        r = self.regmap[name]
        if index is not None:
            return self.tables[(r.address, index)]
        return self.words[r.address]

    def _exposure(self):
        f = {n: self._get(f"order_entry.exposure_{n}") for n in
             ("kind", "session", "slot", "side", "quantity")}
        self.exposure_updates.append(f)
        if f["kind"] == ExposureUpdateKind.EXECUTION:
            r = self.regmap["risk.position"]
            signed = f["quantity"] if f["side"] == ord("B") else -f["quantity"]
            key = (r.address, f["slot"])
            position = self.tables[key] - ((self.tables[key] >> 32) << 33)
            self.tables[key] = (position + signed) & 0xFFFFFFFF
            self.tables[(r.address + 1, f["slot"])] = 1 if position + signed < 0 else 0

    def events(self, timeout=0.0, limit=None):
        out = []
        while self.events_queue and (limit is None or len(out) < limit):
            out.append(self.events_queue.popleft())
        return out

    def receive_frames(self, timeout=0.0, limit=None):
        out = []
        while self.frames and (limit is None or len(out) < limit):
            out.append(self.frames.popleft())
        return out

    def send_frame(self, port, frame):
        pass

    def close(self):
        self.closed = True


class Frame:
    def __init__(self, data):
        self.port, self.data, self.timestamp = "order", data, 0


def order_frame(user_ref_num, side, quantity, symbol, price):
    message = ouch.pack_inbound("O", user_ref_num=user_ref_num, side=side, quantity=quantity,
                                symbol=symbol, price=price, time_in_force="0", display="Y",
                                capacity="A", intermarket_sweep_eligibility="N", cross_type="N",
                                cl_ord_id="TW01", appendage_length=0)
    data = udp_frame(soupbintcp.frame("U", message), src_mac=1, dst_mac=2, src_ip=3, dst_ip=4,
                     src_port=5, dst_port=6)
    return Frame(data + fcs(data))


CONFIG = """
[card]
driver = "sim"
socket = "/nonexistent"

[[sessions]]
name = "ouch1"
host = "127.0.0.1"
port = {port}
username = "TWUSER"
password = "TWPASS"
card = true

[symbols]
tracked = ["AAPL", "MSFT"]
"""


@pytest.fixture
def agent(tmp_path):
    regmap = RegisterMap.load()
    driver = ModelDriver(regmap)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # the session connects and waits for a login answer that never comes
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(port=listener.getsockname()[1]))
    agent = Agent(AgentOptions(config=path, journal=tmp_path / "journal",
                               control=str(tmp_path / "agent.sock"), reconcile_interval=0.05),
                  open_card=lambda config, regmap: Card(driver, regmap, check_identity=False))
    agent.start()
    agent.driver = driver
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    yield agent
    agent.stop()
    thread.join(timeout=10)
    agent.close()
    listener.close()


def _sent(user_ref_num, side, quantity, price, session=0, host=True):
    return Event(EventType.ORDER_SENT, 100, flags=EventFlag.HOST if host else EventFlag.NONE,
                 fields={"action": ord("O"), "user_ref_num": user_ref_num, "quantity": quantity,
                         "price": price, "stock_locate": 1, "side": ord(side),
                         "session": session})


def _wait(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_exchange_messages_move_positions_and_the_cards_exposure(agent):
    d = agent.driver
    d.events_queue.append(_sent(1, "B", 100, 190_0000))
    d.frames.append(order_frame(1, "B", 100, "AAPL", 190_0000))
    # the session is down (the listener never answers): the order became an exchange reject
    _wait(lambda: RecordType.REJECT in [r.type for r in JournalReader(agent.options.journal)])
    types = [r.type for r in JournalReader(agent.options.journal)]
    assert types.index(RecordType.ORDER) < types.index(RecordType.REJECT)
    assert not agent.positions.orders
    assert any(u["kind"] == ExposureUpdateKind.REJECT for u in d.exposure_updates)

    # exchange messages as the session thread hands them over
    forwarded = []
    agent.sessions[0].send = forwarded.append  # stands in for a logged-in session
    d.events_queue.append(_sent(2, "B", 100, 190_0000))
    d.frames.append(order_frame(2, "B", 100, "AAPL", 190_0000))
    _wait(lambda: (0, 2) in agent.positions.orders)
    assert [ouch.unpack_inbound(soupbintcp.unframe(p)[0][0][1])["user_ref_num"]
             for p in forwarded] == [2]
    session = agent.sessions[0]
    accepted = ouch.OUTBOUND["A"].pack(
        timestamp=1, user_ref_num=2, side="B", quantity=100, symbol="AAPL", price=190_0000,
        time_in_force="0", display="Y", order_reference_number=77, capacity="A",
        intermarket_sweep_eligibility="N", cross_type="N", order_state="L", cl_ord_id="TW01",
        appendage_length=0)
    executed = ouch.OUTBOUND["E"].pack(timestamp=2, user_ref_num=2, quantity=100,
                                       price=189_9000, liquidity_flag="R", match_number=9,
                                       appendage_length=0)
    for n, message in enumerate((accepted, executed, executed), 1):  # the fill comes twice
        agent._from_session("sequenced", session, (n, message))
    _wait(lambda: agent.positions.book(0, "AAPL").position == 100)
    time.sleep(0.2)
    assert agent.positions.book(0, "AAPL").position == 100  # the repeat was recognised
    fills = [r for r in JournalReader(agent.options.journal) if r.type == RecordType.FILL]
    assert [(f.fields["quantity"], f.fields["price"]) for f in fills] == [(100, 189_9000)]
    kinds = [u["kind"] for u in d.exposure_updates]
    assert kinds[-2:] == [ExposureUpdateKind.EXECUTION, ExposureUpdateKind.DONE]
    # the model card moved its position: reconciliation finds nothing to say
    _wait(lambda: agent.reconciliation["checked"] >= 3)
    assert agent.reconciliation["mismatches"] == {}


def test_reconciliation_mismatch_is_an_alert(agent):
    d = agent.driver
    r = agent.regmap["risk.position"]
    d.tables[(r.address, 1)] = 25  # MSFT: the card holds 25 shares the host never saw
    _wait(lambda: "MSFT" in agent.reconciliation["mismatches"])
    assert agent.reconciliation["mismatches"]["MSFT"]["position"] == {"host": 0, "card": 25}
    alerts = [rec for rec in JournalReader(agent.options.journal)
              if rec.type == RecordType.ALERT and rec.fields["code"] == AlertCode.RECONCILE]
    assert len(alerts) == 1 and "MSFT" in alerts[0].fields["message"]
    time.sleep(0.3)  # seen again: journalled once
    assert len([rec for rec in JournalReader(agent.options.journal)
                if rec.type == RecordType.ALERT and rec.fields["code"] == AlertCode.RECONCILE]) == 1


def test_control_socket(agent):
    path = agent.options.control
    status = request(path, "status")
    assert status["sessions"][0]["name"] == "ouch1" and status["journal"]["records"] >= 0
    assert request(path, "kill", {"session": "ouch1"})["killed_sessions"] == 1
    assert request(path, "unkill", {"session": "ouch1"})["killed_sessions"] == 0
    with pytest.raises(ControlError, match="no session 'nope'"):
        request(path, "kill", {"session": "nope"})
    with pytest.raises(ControlError, match="unknown command"):
        request(path, "frobnicate")
    with pytest.raises(ControlError, match="not tracked"):
        request(path, "order", {"symbol": "TSLA", "side": "B", "quantity": 1, "price": 1})
    # a host order the card refuses comes back with the card's reason
    agent.driver.events_queue.clear()
    threading.Timer(0.2, lambda: agent.driver.events_queue.append(Event(
        EventType.RISK_REJECT, 5, flags=EventFlag.HOST, fields={
            "reason": int(RejectReason.MAX_QUANTITY), "quantity": 5000, "price": 1_0000,
            "stock_locate": 0, "side": ord("B"), "session": 0, "slot": 0}))).start()
    answer = request(path, "order", {"symbol": "AAPL", "side": "B", "quantity": 5000,
                                     "price": 1_0000})
    assert answer == {"accepted": False, "reason": "MAX_QUANTITY",
                      "reason_code": int(RejectReason.MAX_QUANTITY)}
    records = [r.type for r in JournalReader(agent.options.journal)]
    assert records.count(RecordType.KILL) == 1 and records.count(RecordType.UNKILL) == 1


def test_cli_says_when_no_agent_runs(tmp_path, capsys):
    from tickwire.host.cli import main
    with pytest.raises(AgentNotRunning, match="no tickwire agent is running"):
        request(str(tmp_path / "none.sock"), "status")
    with pytest.raises(SystemExit) as e:
        main(["positions", "--control", str(tmp_path / "none.sock")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tickwire agent is running" in err[0]


def test_event_and_journal_rates(agent, capsys):
    """Card events consumed per second by the agent's loop: risk rejects (each journalled) and
    orders (event + frame, each journalled as ORDER)."""
    d = agent.driver
    n = 20_000
    before = agent.counts["events"]
    journalled = agent.counts["journalled"]
    reject = Event(EventType.RISK_REJECT, 5, fields={
        "reason": 1, "quantity": 10, "price": 1_0000, "stock_locate": 0, "side": ord("B"),
        "session": 0, "slot": 0})
    t0 = time.perf_counter()
    d.events_queue.extend([reject] * n)
    _wait(lambda: agent.counts["events"] - before >= n, 60)
    rejects = n / (time.perf_counter() - t0)
    assert agent.counts["journalled"] - journalled >= n
    journal_count = JournalReader(agent.options.journal).count()
    assert journal_count >= n
    with capsys.disabled():
        print(f"\nagent: {rejects:,.0f} RISK_REJECT events/s consumed and journalled "
              f"(journal + metrics per event)")
