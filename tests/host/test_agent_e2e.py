"""End to end: the simulated card (``tickwire sim serve``), the agent (``tickwire run``) and an
exchange peer on loopback; orders, fills, positions and P&L, kill switch, SIGKILL and restart,
and the start-up failures (bad config, a card that does not answer, a driver that is not there).

The exchange peer is a minimal SoupBinTCP 4.0 / OUCH 5.0 server in this file: it accepts every
Enter Order and fills it completely at the order's price, keeps one sequenced stream per account
across reconnects and resumes it from the requested sequence number.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tickwire.host.journal import JournalReader, RecordType
from tickwire.host.positions import Positions
from tickwire.protocols import itch, moldudp64, ouch, soupbintcp
from tickwire.protocols.net import multicast_mac
from tickwire.protocols.risk import RejectReason
from tickwire.sim.card import PORTS, PROTOCOL_VERSION, Op
from tickwire.sim.defaults import CARD_MAC, FEED_GROUP, FEED_PORT
from tickwire.sim.feed import udp_frame

PY = sys.executable
CLI = [PY, "-m", "tickwire.host.cli"]
STARTUP = 60  # seconds for the agent to come up (it applies the config over the sim socket)


# -- the exchange peer -----------------------------------------------------------------------------

class ExchangePeer:
    """SoupBinTCP server on 127.0.0.1: Login Accepted, Server Heartbeats, every Enter Order
    accepted and filled at its price; sequenced messages kept per account for resumes."""

    def __init__(self):
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.port = self.server.getsockname()[1]
        self.stream = []              # sequenced OUCH messages, sequence = index + 1
        self.orders = []              # inbound OUCH messages received
        self.logins = []              # requested sequence numbers
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.order_reference_number = 1000
        self.match_number = 5000
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.server.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(0.2)
        buffer, sent_upto, last_sent, logged_in = b"", 0, time.monotonic(), False
        try:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                except socket.timeout:
                    pass
                packets, buffer = soupbintcp.unframe(buffer)
                for kind, payload in packets:
                    if kind == "L":
                        fields = soupbintcp.CLIENT["L"].unpack(payload)
                        requested = int(str(fields["requested_sequence_number"]).strip() or 0)
                        with self.lock:
                            self.logins.append(requested)
                            sent_upto = len(self.stream) if requested == 0 else \
                                min(requested - 1, len(self.stream))
                        conn.sendall(soupbintcp.frame("A", soupbintcp.SERVER["A"].pack(
                            session="TEST000001", sequence_number=str(sent_upto + 1).rjust(20))))
                        logged_in = True
                    elif kind == "U" and logged_in:
                        self._order(ouch.unpack_inbound(payload))
                    elif kind == "O":
                        return
                with self.lock:
                    pending = self.stream[sent_upto:]
                    sent_upto = len(self.stream)
                if pending:
                    conn.sendall(b"".join(soupbintcp.frame("S", m) for m in pending))
                    last_sent = time.monotonic()
                elif logged_in and time.monotonic() - last_sent > 0.5:
                    conn.sendall(soupbintcp.frame("H"))
                    last_sent = time.monotonic()
        except OSError:
            return
        finally:
            conn.close()

    def _order(self, m):
        with self.lock:
            self.orders.append(m)
            if m["message_type"] != "O":
                return
            self.order_reference_number += 1
            self.match_number += 1
            common = dict(timestamp=1, user_ref_num=m["user_ref_num"])
            self.stream.append(ouch.OUTBOUND["A"].pack(
                **common, side=m["side"], quantity=m["quantity"], symbol=m["symbol"],
                price=m["price"], time_in_force=m["time_in_force"], display=m["display"],
                order_reference_number=self.order_reference_number, capacity=m["capacity"],
                intermarket_sweep_eligibility="N", cross_type="N", order_state="L",
                cl_ord_id=m["cl_ord_id"], appendage_length=0))
            self.stream.append(ouch.OUTBOUND["E"].pack(
                **common, quantity=m["quantity"], price=m["price"], liquidity_flag="R",
                match_number=self.match_number, appendage_length=0))

    def close(self):
        self.stop.set()
        self.server.close()


# -- fixtures --------------------------------------------------------------------------------------

def _wait_for(predicate, seconds, what, proc=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}: "
                        f"{proc.stderr.read().decode(errors='replace')}")
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {seconds} s")


def _stop(proc, sig=signal.SIGTERM, timeout=20):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def card_socket(tmp_path_factory):
    from tickwire.sim.card import build_card_harness
    build_card_harness(announce=lambda text: print(text, file=sys.stderr))
    path = str(tmp_path_factory.mktemp("card") / "card.sock")
    proc = subprocess.Popen([*CLI, "sim", "serve", "--socket", path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_for(lambda: os.path.exists(path), 600, "tickwire sim serve", proc)
    yield path
    _stop(proc)


@pytest.fixture(scope="module")
def exchange():
    peer = ExchangePeer()
    yield peer
    peer.close()


CONFIG = """
[card]
driver = "sim"
socket = "{socket}"
timeout = 20

[[feeds]]
name = "itch"
a = {{ interface = "sim0", group = "{group}", port = {feed_port}, mac = "{mac}" }}

[[sessions]]
name = "ouch1"
host = "127.0.0.1"
port = {port}
username = "TWUSER"
password = "TWPASS"
card = true

[symbols]
tracked = ["AAPL", "MSFT"]

[risk]
symbol_enabled = true
max_order_quantity = 1000
max_order_notional = "1000000"
price_collar = "20.00"
max_long_position = 5000
max_short_position = 5000
max_open_orders = 50
max_open_notional = "10000000"
throttle_burst = 1000
throttle_interval = 1

[risk.symbols.MSFT]
reference_price = "420.00"
"""


def _mac(value):
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


def _ip(value):
    return ".".join(str(b) for b in value.to_bytes(4, "big"))


@pytest.fixture
def config(tmp_path, card_socket, exchange):
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(socket=card_socket, port=exchange.port, group=_ip(FEED_GROUP),
                                  feed_port=FEED_PORT, mac=_mac(CARD_MAC)))
    return path


class AgentProcess:
    def __init__(self, config, journal, control, *extra):
        self.control = control
        self.log = open(f"{control}.log", "ab")  # a file: a pipe nobody reads could fill up
        self.proc = subprocess.Popen(
            [*CLI, "run", "--config", str(config), "--journal", str(journal), "--control",
             control, "--metrics-port", "0", "--reconcile-interval", "0.3", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + STARTUP
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                pytest.fail(f"tickwire run did not start: {self.output()}")
            time.sleep(0.1)

    def output(self):
        with open(f"{self.control}.log", "rb") as f:
            return f.read().decode(errors="replace")

    def _answers(self):
        try:
            self.ask("ping")
            return True
        except Exception:
            return False

    def ask(self, command, **args):
        from tickwire.host.control import request
        return request(self.control, command, args, timeout=30)

    def cli(self, *args):
        return subprocess.run([*CLI, *args, "--control", self.control], capture_output=True,
                              text=True, timeout=60)

    def stop(self, sig=signal.SIGTERM):
        _stop(self.proc, sig)
        self.log.close()


def _positions_row(agent, symbol):
    rows = [r for r in agent.ask("positions")["positions"] if r["symbol"] == symbol]
    return rows[0] if rows else None


def _wait_position(agent, symbol, position, seconds=30):
    _wait_for(lambda: (_positions_row(agent, symbol) or {}).get("position") == position
              and not agent.ask("orders")["orders"], seconds,
              f"{symbol} position {position} with no open order")


class CardFeed:
    """Feed frames straight into the card over the sim socket (SEND only: no event ring, so
    the agent keeps the card's events)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self._request(Op.HELLO, PROTOCOL_VERSION.to_bytes(2, "little"))
        self.sequence = 1
        self.reference = 7_000_000

    def _request(self, op, body):
        message = bytes([op]) + body
        self.sock.sendall(len(message).to_bytes(4, "little") + message)
        head = self.sock.recv(4, socket.MSG_WAITALL)
        reply = self.sock.recv(int.from_bytes(head, "little"), socket.MSG_WAITALL)
        assert reply[0] == 0, reply[1:].decode(errors="replace")
        return reply[1:]

    def send(self, messages):
        packet = moldudp64.pack("TICKWIRE01", self.sequence, messages)
        self.sequence += len(messages)
        frame = udp_frame(packet, src_mac=0x020000000001, dst_mac=multicast_mac(FEED_GROUP),
                          src_ip=0x0A000001, dst_ip=FEED_GROUP, src_port=FEED_PORT,
                          dst_port=FEED_PORT)
        self._request(Op.SEND, bytes([PORTS.index("feed_a")]) + frame)

    def add(self, side, shares, price, locate=1, stock="AAPL"):
        self.reference += 1
        return itch.pack("A", stock_locate=locate, tracking_number=0, timestamp=1,
                         order_reference_number=self.reference, buy_sell_indicator=side,
                         shares=shares, stock=stock, price=price)

    def close(self):
        self.sock.close()


def _directory(symbol, locate):
    return itch.pack("R", stock_locate=locate, tracking_number=0, timestamp=1, stock=symbol,
                     market_category="Q", financial_status_indicator="N", round_lot_size=100,
                     round_lots_only="N", issue_classification="C", issue_sub_type="Z",
                     authenticity="P", short_sale_threshold_indicator="N", ipo_flag="N",
                     luld_reference_price_tier="1", etp_flag="N", etp_leverage_factor=0,
                     inverse_indicator="N")


# -- the test --------------------------------------------------------------------------------------

def test_orders_fills_kill_sigkill_and_restart(tmp_path, config, exchange, card_socket, capsys):
    journal = tmp_path / "journal"
    control = str(tmp_path / "agent.sock")
    agent = AgentProcess(config, journal, control)
    try:
        _wait_for(lambda: agent.ask("status")["sessions"][0]["state"] == "up", 20, "session up")
        config_changes = [r for r in JournalReader(journal) if r.type == RecordType.CONFIG_CHANGE]
        assert config_changes, "the config's register writes are journalled"
        assert agent.ask("limits")["slots"][0]["max_order_quantity"] == 1000

        # The book of AAPL: bid 189.90, ask 190.10 (the mark and the collar's reference).
        feed = CardFeed(card_socket)
        try:
            feed.send([_directory("AAPL", 1), _directory("MSFT", 2),
                       feed.add("B", 300, 189_9000), feed.add("S", 300, 190_1000)])
        finally:
            feed.close()
        _wait_for(lambda: agent.ask("positions")["bbo"].get("AAPL") == {"bid": 189_9000,
                                                                      "ask": 190_1000},
                  20, "the agent marks AAPL at the card's top of book")

        # Buy 100 @ 190.00, buy 50 @ 190.20, sell 120 @ 190.50: FIFO realized P&L.
        for side, quantity, price in (("buy", 100, "190.00"), ("buy", 50, "190.20"),
                                      ("sell", 120, "190.50")):
            done = agent.cli("order", "send", side, str(quantity), "AAPL", price, "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["accepted"] is True
            _wait_for(lambda: not agent.ask("orders")["orders"], 20, "the order filled")
        _wait_position(agent, "AAPL", 30)
        row = _positions_row(agent, "AAPL")
        # 100 bought at 190.00 and 20 of the 50 at 190.20 sold at 190.50
        assert row["realized"] == (190_5000 - 190_0000) * 100 + (190_5000 - 190_2000) * 20
        # 30 long at 190.20, marked at the bid 189.90
        assert row["unrealized"] == (189_9000 - 190_2000) * 30
        table = agent.cli("positions")
        assert table.returncode == 0 and "AAPL" in table.stdout and "56.0000" in table.stdout

        # The card's exposure agrees with the positions (reconciled while quiet).
        _wait_for(lambda: agent.ask("status")["reconciliation"]["checked"] >= 3, 20,
                  "reconciliation runs")
        status = agent.ask("status")
        assert status["reconciliation"]["mismatches"] == {}
        slot = agent.ask("limits")["slots"][0]
        assert (slot["position"], slot["open_buy_quantity"], slot["open_sell_quantity"]) == \
            (30, 0, 0)

        # Kill switch: the next order is rejected by risk with reason KILL.
        killed = agent.cli("kill", "--json")
        assert killed.returncode == 0 and json.loads(killed.stdout)["killed"] is True
        refused = agent.cli("order", "send", "buy", "10", "AAPL", "190.00", "--json")
        assert refused.returncode == 3
        assert json.loads(refused.stdout)["reason"] == RejectReason.KILL.name
        assert agent.cli("unkill").returncode == 0
        records = list(JournalReader(journal))
        assert [r.fields["reason"] for r in records if r.type == RecordType.REJECT] == \
            [RejectReason.KILL]
        assert [r.type for r in records if r.type in (RecordType.KILL, RecordType.UNKILL)] == \
            [RecordType.KILL, RecordType.UNKILL]
        metrics = agent.ask("status")["metrics"]
        import urllib.request
        text = urllib.request.urlopen(metrics, timeout=10).read().decode()
        assert 'tickwire_fills_total{session="ouch1"} 3.0' in text

        # SIGKILL while orders stream: the journal stays whole and positions come back from it.
        streaming = threading.Event()

        def stream():
            while not streaming.is_set():
                side = "buy" if int(time.monotonic() * 10) % 2 else "sell"
                subprocess.run([*CLI, "order", "send", side, "10", "AAPL", "190.00",
                                "--control", control], capture_output=True, timeout=60)
        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        _wait_for(lambda: len(exchange.orders) >= 6, 60, "orders streaming")
        agent.stop(signal.SIGKILL)
        streaming.set()
        sender.join(timeout=70)
        assert agent.proc.returncode == -signal.SIGKILL
        before = list(JournalReader(journal))  # every record CRC-checked
        rebuilt = Positions.from_records(before)
        assert rebuilt.book(0, "AAPL").position == sum(
            (r.fields["quantity"] if rebuilt_side(before, r) == "B" else -r.fields["quantity"])
            for r in before if r.type == RecordType.FILL)
    finally:
        agent.stop()

    agent = AgentProcess(config, journal, control)
    try:
        _wait_for(lambda: agent.ask("status")["sessions"][0]["state"] == "up", 20, "session up")
        # The restarted agent resumes the session: fills the dead one missed are taken now.
        _wait_for(lambda: not agent.ask("orders")["orders"], 30, "missed fills taken")
        records = list(JournalReader(journal))
        assert records[:len(before)] == before
        expected = Positions.from_records(records).book(0, "AAPL")
        row = _positions_row(agent, "AAPL")
        assert (row["position"], row["realized"]) == (expected.position, expected.realized)
        fills = [r for r in records if r.type == RecordType.FILL]
        assert len({r.fields["match_number"] for r in fills}) == len(fills)  # none twice
        # And it keeps trading: one more buy moves the position by exactly its quantity.
        done = agent.cli("order", "send", "buy", "7", "AAPL", "190.00", "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["accepted"], done.stdout
        _wait_position(agent, "AAPL", expected.position + 7)
        with capsys.disabled():
            counts = agent.ask("status")["counts"]
            print(f"\nagent after restart: {counts}")
    finally:
        agent.stop()
    assert agent.proc.returncode == 0


def rebuilt_side(records, fill):
    for r in records:
        if r.type == RecordType.ORDER and r.fields["user_ref_num"] == fill.fields["user_ref_num"] \
                and r.fields["session"] == fill.fields["session"]:
            return r.fields["side"]
    raise AssertionError(f"fill {fill} of an order not journalled")


# -- start-up failures: one clear error, nothing written -------------------------------------------

def _run_once(*args, timeout=90):
    return subprocess.run([*CLI, "run", *args], capture_output=True, text=True, timeout=timeout)


class RawCard(CardFeed):
    """Register reads and writes over a plain socket (no event ring)."""

    def read(self, address):
        return int.from_bytes(self._request(Op.READ, address.to_bytes(4, "little")), "little")

    def write(self, address, value):
        self._request(Op.WRITE, address.to_bytes(4, "little") + value.to_bytes(4, "little"))


def _card_values(card_socket, writes):
    """What the card holds in each register a config writes (selector written first)."""
    from tickwire.host.regmap import RegisterMap, Registers
    regmap = RegisterMap.load()
    raw = RawCard(card_socket)
    try:
        registers = Registers(regmap, raw)
        out = {}
        for w in writes:
            if w.select is not None:
                registers.write(*w.select)
            out[w.name] = registers.read(w.register)
        return out
    finally:
        raw.close()


class FailingProxy:
    """Passes the sim socket protocol through to the card, but answers the ``fail_at``-th
    register WRITE with an error (a card refusing one write in the middle of an apply)."""

    def __init__(self, path, card_socket, fail_at):
        self.path, self.card_socket, self.fail_at = path, card_socket, fail_at
        self.writes = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(2)
        self.server.settimeout(0.2)
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        card = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        card.connect(self.card_socket)
        try:
            while True:
                head = client.recv(4, socket.MSG_WAITALL)
                if len(head) < 4:
                    return
                body = client.recv(int.from_bytes(head, "little"), socket.MSG_WAITALL)
                if body[0] == Op.WRITE:
                    self.writes += 1
                    if self.writes == self.fail_at:
                        reply = b"\x01refused by the test proxy"
                        client.sendall(len(reply).to_bytes(4, "little") + reply)
                        continue
                card.sendall(head + body)
                head = card.recv(4, socket.MSG_WAITALL)
                client.sendall(head + card.recv(int.from_bytes(head, "little"),
                                                socket.MSG_WAITALL))
        except OSError:
            return
        finally:
            card.close()
            client.close()

    def close(self):
        self.stop.set()
        self.server.close()


def test_apply_failure_leaves_no_partial_writes(tmp_path, config, card_socket):
    """The card refuses a register write in the middle of the apply: every register written
    before it gets its old value back, the agent says so in one line and does not start."""
    from tickwire.host.appconfig import load_config
    text = config.read_text().replace("max_order_quantity = 1000", "max_order_quantity = 900")
    text = text.replace('tracked = ["AAPL", "MSFT"]', 'tracked = ["AAPL", "MSFT", "NVDA"]')
    text = text.replace("max_long_position = 5000", "max_long_position = 4000")
    proxy_path = str(tmp_path / "proxy.sock")
    start = text.index('socket = "') + len('socket = "')
    text = text[:start] + proxy_path + text[text.index('"', start):]
    (tmp_path / "partial.toml").write_text(text)
    writes = load_config(tmp_path / "partial.toml").writes
    before = _card_values(card_socket, writes)
    assert sum(before[w.name] != w.value for w in writes) > 3  # the apply has work to do
    # diff writes the selector of each indexed register once before anything changes
    fail_at = sum(w.select is not None for w in writes) + 6
    proxy = FailingProxy(proxy_path, card_socket, fail_at=fail_at)
    try:
        result = _run_once("--config", str(tmp_path / "partial.toml"), "--journal",
                           str(tmp_path / "j"), "--control", str(tmp_path / "c.sock"))
    finally:
        proxy.close()
    assert proxy.writes > fail_at  # the restore went on after the refused write
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused by the test proxy" in lines[0] \
        and "as it was" in lines[0], result.stderr
    assert _card_values(card_socket, writes) == before
    assert [r.type for r in JournalReader(tmp_path / "j")] == []  # no CONFIG_CHANGE kept


def test_bad_config_is_one_error(tmp_path, config):
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("max_order_quantity = 1000",
                                              "max_order_quantity = -5"))
    result = _run_once("--config", str(bad), "--journal", str(tmp_path / "j"), "--control",
                       str(tmp_path / "c.sock"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.toml:" in lines[0] and "max_order_quantity" in lines[0], \
        result.stderr
    assert not (tmp_path / "c.sock").exists() and not (tmp_path / "j").exists()


def test_card_that_does_not_answer(tmp_path, config):
    mute_path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(mute_path)
    mute.listen(1)
    try:
        text = config.read_text()
        start = text.index('socket = "') + len('socket = "')
        text = text[:start] + mute_path + text[text.index('"', start):]
        text = text.replace("timeout = 20", "timeout = 0.5")
        (tmp_path / "mute.toml").write_text(text)
        t0 = time.monotonic()
        result = _run_once("--config", str(tmp_path / "mute.toml"), "--journal",
                           str(tmp_path / "j"), "--control", str(tmp_path / "c.sock"))
        assert time.monotonic() - t0 < 30
    finally:
        mute.close()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not answer in 0.5 s" in lines[0], result.stderr
    assert list(JournalReader(tmp_path / "j")) == []
    assert not (tmp_path / "c.sock").exists()


def test_driver_not_available(tmp_path, config):
    text = config.read_text()
    card_table = text[text.index("[card]"):text.index("[[feeds]]")]
    text = text.replace(card_table, '[card]\ndriver = "dpdk"\n\n')
    (tmp_path / "dpdk.toml").write_text(text)
    result = _run_once("--config", str(tmp_path / "dpdk.toml"), "--journal", str(tmp_path / "j"),
                       "--control", str(tmp_path / "c.sock"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    # dpdk needs its port (interface, pci or vdev): one clear line, nothing started
    assert len(lines) == 1 and "dpdk driver" in lines[0] and "interface" in lines[0], result.stderr
    assert not (tmp_path / "c.sock").exists()
