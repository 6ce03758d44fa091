"""pcie driver against a memory-mapped regular file standing in for the BAR, with a fake card
thread that gives the registers their semantics and writes events into the host's ring."""

import mmap
import threading
import time

import pytest

from tickwire.drivers import CardTimeout, DriverError, DriverUnavailable, open_driver
from tickwire.drivers.pcie import PcieDriver, resource_path
from tickwire.drivers.ring import RingWriter
from tickwire.host.card import Card
from tickwire.host.regmap import RegisterMap
from tickwire.protocols.events import Event, EventType

BAR_BYTES = 16384


class FakeCard(threading.Thread):
    """Maps the same BAR file: answers id.*, counts id.cycles, and while trigger rule 0 is on
    'sends' one order per trigger.rule_0_quantity write: an ORDER_SENT event and
    ouch.orders_sent + 1."""

    def __init__(self, bar_path, ring_path, regmap):
        super().__init__(daemon=True)
        self.regmap = regmap
        with open(bar_path, "r+b") as f:
            self.bar = mmap.mmap(f.fileno(), BAR_BYTES)
        self.words = memoryview(self.bar).cast("I")
        self.ring_path = ring_path
        self.stop = threading.Event()
        self.words[regmap["id.magic"].address] = regmap.magic
        self.words[regmap["id.regmap_version"].address] = regmap.regmap_version
        self.last_quantity = self.words[regmap["trigger.rule_0_quantity"].address]

    def run(self):
        r = self.regmap
        with open(self.ring_path, "r+b") as f:
            ring = mmap.mmap(f.fileno(), 0)
        writer = RingWriter(ring)
        cycles, last_quantity = 0, self.last_quantity
        while not self.stop.is_set():  # bounded by the test's stop()
            cycles += 1000
            self.words[r["id.cycles"].address] = cycles & 0xFFFF_FFFF
            quantity = self.words[r["trigger.rule_0_quantity"].address]
            if self.words[r["trigger.rule_0_kind"].address] and quantity != last_quantity:
                sent = r["ouch.orders_sent"].address
                self.words[sent] += 1
                writer.write(Event(EventType.ORDER_SENT, cycles, fields={
                    "action": ord("O"), "user_ref_num": self.words[sent], "quantity": quantity,
                    "price": self.words[r["trigger.rule_0_threshold"].address], "stock_locate":
                    self.words[r["trigger.rule_0_slot"].address], "side": ord("B"),
                    "session": 0}))
                last_quantity = quantity
            time.sleep(0.0005)
        writer.release()
        ring.close()
        self.words.release()
        self.bar.close()


@pytest.fixture
def bar(tmp_path):
    path = tmp_path / "resource0"
    path.write_bytes(bytes(BAR_BYTES))
    return path


@pytest.fixture
def fake(bar, tmp_path):
    regmap = RegisterMap.load()
    ring = tmp_path / "events.ring"
    driver = PcieDriver(resource=str(bar), ring_path=str(ring), ring_entries=8)
    card = FakeCard(bar, ring, regmap)
    card.start()
    yield driver, card, regmap
    card.stop.set()
    card.join(timeout=5)
    driver.close()


def test_words_land_in_the_bar_file(bar):
    with PcieDriver(resource=str(bar)) as driver:
        assert driver.words == BAR_BYTES // 4
        driver.write(3, 0xDEADBEEF)
        driver.write(4, 7)
        assert driver.read(3) == 0xDEADBEEF
    data = bar.read_bytes()
    assert data[12:20] == (0xDEADBEEF).to_bytes(4, "little") + (7).to_bytes(4, "little")


def test_card_api_over_pcie_with_events(fake):
    driver, _, regmap = fake
    card = Card(driver, regmap)  # identity from the fake card
    card.trigger.rule_0_threshold = 1_000_000
    card.trigger.rule_0_slot = 12
    card.trigger.rule_0_kind = 1
    received = []
    for quantity in range(1, 13):  # 12 orders through an 8-entry ring: it wraps
        card.trigger.rule_0_quantity = quantity
        deadline = time.monotonic() + 5
        while len(received) < quantity and time.monotonic() < deadline:
            received += card.events(timeout=0.5)
    assert [e.type for e in received] == [EventType.ORDER_SENT] * 12
    assert [e["quantity"] for e in received] == list(range(1, 13))
    assert [e.sequence for e in received] == list(range(12))
    assert received[0]["stock_locate"] == 12 and received[0]["price"] == 1_000_000
    assert card.ouch.orders_sent == 12
    assert card.id.cycles > 0
    assert driver._ring.dropped == 0


def test_events_wait_at_most_the_timeout(bar):
    with PcieDriver(resource=str(bar)) as driver:
        t0 = time.monotonic()
        assert driver.events(timeout=0.2) == []
        assert 0.19 < time.monotonic() - t0 < 1.0


def test_a_card_that_does_not_answer(bar):
    bar.write_bytes(b"\xff" * BAR_BYTES)  # what reads of a card behind a dead link return
    with PcieDriver(resource=str(bar)) as driver:
        with pytest.raises(CardTimeout, match="does not answer"):
            driver.read(5)
        with pytest.raises(CardTimeout):
            Card(driver)


def test_errors(bar, tmp_path):
    with pytest.raises(DriverUnavailable, match="no PCI function 0000:7f:1f.7"):
        open_driver({"driver": "pcie", "bdf": "0000:7f:1f.7"})
    with pytest.raises(DriverError, match="not a PCI address"):
        resource_path("01:00.0")
    with pytest.raises(DriverError, match="unknown option 'bars'"):
        open_driver({"driver": "pcie", "resource": str(bar), "bars": 1})
    with pytest.raises(DriverError, match="power of two"):
        PcieDriver(resource=str(bar), ring_entries=12)
    with PcieDriver(resource=str(bar)) as driver:
        with pytest.raises(DriverError, match="beyond the 16384-byte BAR"):
            driver.read(BAR_BYTES // 4)
        with pytest.raises(DriverError, match="not a 32-bit word"):
            driver.write(0, 1 << 32)
        with pytest.raises(DriverError, match="does not offer sending frames"):
            driver.send_frame("feed_a", b"x")
    with pytest.raises(DriverError, match="closed"):
        driver.read(0)
