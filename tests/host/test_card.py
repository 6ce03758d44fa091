"""Card API: typed registers from the map, indexed registers, identity, kill switch, host orders."""

import pytest

from tickwire.drivers.base import Driver, EVENTS, REGISTERS
from tickwire.host.card import Card, CardFeatureError, OrderQueueFull
from tickwire.host.errors import TickwireError
from tickwire.host.regmap import (IdentityError, MemoryTransport, RegisterAccessError, RegisterMap,
                                  RegisterValueError)
from tickwire.protocols.events import Event, EventType

MAGIC = 0x54574952


def _reg(stage, name, address, width, access, reset=0, indexed_by=""):
    d = {"stage": stage, "name": name, "address": address, "size": -(-width // 32),
         "width": width, "access": access, "reset": reset, "description": ""}
    if indexed_by:
        d["indexed_by"] = indexed_by
    return d


def make_map(order_queue=False):
    regs = [_reg("id", "magic", 0, 32, "ro"), _reg("id", "regmap_version", 1, 16, "ro"),
            _reg("risk", "kill", 64, 1, "rw"), _reg("risk", "slot", 65, 16, "rw"),
            _reg("risk", "max_order_quantity", 66, 32, "rw", indexed_by="risk.slot"),
            _reg("risk", "max_order_notional", 67, 64, "rw"),
            _reg("risk", "accepted", 69, 32, "ro")]
    if order_queue:
        names = {"action": 8, "session": 8, "slot": 16, "side": 8, "quantity": 32, "price": 32,
                 "user_ref_num": 32, "stock": 64, "submit": 1}
        address = 128
        for name, width in names.items():
            regs.append(_reg("order_entry", f"host_{name}", address, width, "rw"))
            address += -(-width // 32)
        regs.append(_reg("order_entry", "host_dropped", address, 32, "ro"))
    return RegisterMap.from_dict({
        "format": "tickwire-regmap", "version": 1, "word_bytes": 4,
        "constants": {"regmap_version": 7, "magic": MAGIC},
        "registers": {f"{r['stage']}.{r['name']}": r for r in regs}}, source="test map")


class FakeCard(Driver):
    """Registers in a dict; indexed risk.max_order_quantity kept per slot, as the stage does."""

    name = "fake"
    capabilities = frozenset({REGISTERS, EVENTS})

    def __init__(self, regmap, *, magic=MAGIC, version=7):
        super().__init__()
        self.memory = MemoryTransport({regmap["id.magic"].address: magic,
                                       regmap["id.regmap_version"].address: version})
        self.log = []
        self.table = {}
        self.slot_address = regmap["risk.slot"].address
        self.indexed_address = regmap["risk.max_order_quantity"].address
        self.pending = []

    def read(self, address):
        self.log.append(("r", address))
        if address == self.indexed_address:
            return self.table.get(self.memory.read(self.slot_address), 0)
        return self.memory.read(address)

    def write(self, address, value):
        self.log.append(("w", address, value))
        if address == self.indexed_address:
            self.table[self.memory.read(self.slot_address)] = value
        self.memory.write(address, value)

    def events(self, timeout=0.0, limit=None):
        out, self.pending = self.pending, []
        return out


@pytest.fixture
def regmap():
    return make_map()


@pytest.fixture
def card(regmap):
    return Card(FakeCard(regmap), regmap)


def test_plain_registers_read_and_write_through_the_driver(card, regmap):
    card.risk.max_order_notional = 0x1_2345_6789
    assert card.risk.max_order_notional == 0x1_2345_6789
    base = regmap["risk.max_order_notional"].address
    assert ("w", base, 0x2345_6789) in card.driver.log and ("w", base + 1, 1) in card.driver.log
    card.driver.memory.write(regmap["risk.accepted"].address, 41)
    assert card.risk.accepted == 41
    assert isinstance(card.risk.accepted, int)


def test_read_only_and_oversized_writes_are_refused_before_anything_is_written(card):
    before = list(card.driver.log)
    with pytest.raises(RegisterAccessError, match="read-only"):
        card.risk.accepted = 1
    with pytest.raises(RegisterValueError, match="does not fit 1 bits"):
        card.risk.kill = 2
    with pytest.raises(RegisterValueError):
        card.risk.max_order_quantity[3] = 1 << 32
    with pytest.raises(RegisterValueError, match="does not fit 16 bits"):
        card.risk.max_order_quantity[1 << 16] = 5  # index too wide for risk.slot
    assert card.driver.log == before


def test_indexed_register_writes_the_selector_then_the_value(card, regmap):
    card.risk.max_order_quantity[3] = 500
    card.risk.max_order_quantity[5] = 700
    slot, value = regmap["risk.slot"].address, regmap["risk.max_order_quantity"].address
    writes = [e for e in card.driver.log if e[0] == "w"]
    assert writes[-4:] == [("w", slot, 3), ("w", value, 500), ("w", slot, 5), ("w", value, 700)]
    assert card.risk.max_order_quantity[3] == 500
    assert card.risk.max_order_quantity[5] == 700
    assert card.driver.table == {3: 500, 5: 700}


def test_indexed_register_without_index_and_plain_register_with_one(card):
    with pytest.raises(RegisterAccessError, match=r"indexed by risk.slot.*\[index\]"):
        card.risk.max_order_quantity = 500
    with pytest.raises(RegisterAccessError, match="indexed by risk.slot"):
        card.read("risk.max_order_quantity")
    with pytest.raises(RegisterAccessError, match="not indexed"):
        card.write("risk.kill", 1, index=2)


def test_unknown_stage_and_register_name_what_exists(card):
    with pytest.raises(AttributeError, match="stages: id, risk"):
        card.nosuch
    with pytest.raises(AttributeError, match="registers: .*max_order_quantity"):
        card.risk.max_qty
    assert "risk" in dir(card) and "kill" in dir(card.risk)


def test_identity_is_checked_on_connect(regmap):
    with pytest.raises(IdentityError, match="not a tickwire card"):
        Card(FakeCard(regmap, magic=0x1234), regmap)
    with pytest.raises(IdentityError, match="regmap_version reads 6"):
        Card(FakeCard(regmap, version=6), regmap)
    Card(FakeCard(regmap, magic=0), regmap, check_identity=False)


def test_kill_and_unkill(card, regmap):
    assert not card.killed
    card.kill()
    assert card.killed and card.driver.memory.read(regmap["risk.kill"].address) == 1
    card.unkill()
    assert not card.killed


def test_host_order_needs_the_order_entry_registers(card):
    with pytest.raises(CardFeatureError, match="no host order queue: order_entry.host_action"):
        card.submit_order(side="B", quantity=100, price=1_000_000, user_ref_num=1)


def test_host_order_writes_every_field_then_submit():
    regmap = make_map(order_queue=True)
    card = Card(FakeCard(regmap), regmap)
    card.submit_order(side="S", quantity=100, price=1_234_500, user_ref_num=9, session=2,
                      slot=3, stock=int.from_bytes(b"AAPL    ", "little"))
    writes = {e[1]: e[2] for e in card.driver.log if e[0] == "w"}
    q = {r.name[5:]: r.address for r in regmap.stage("order_entry")}
    assert writes[q["action"]] == ord("O") and writes[q["side"]] == ord("S")
    assert (writes[q["quantity"]], writes[q["price"]], writes[q["user_ref_num"]]) == \
        (100, 1_234_500, 9)
    assert (writes[q["session"]], writes[q["slot"]]) == (2, 3)
    assert writes[q["stock"]] == int.from_bytes(b"AAPL", "little")
    assert [e for e in card.driver.log if e[0] == "w"][-1] == ("w", q["submit"], 1)
    card.driver.log.clear()
    card.submit_order(side="B", quantity=5, price=1)  # stock not given: staged as 0 again
    writes = {e[1]: e[2] for e in card.driver.log if e[0] == "w"}
    assert writes[q["stock"]] == 0 and writes[q["user_ref_num"]] == 0


class DroppingCard(FakeCard):
    def write(self, address, value):
        super().write(address, value)
        if address == self.submit:
            self.memory.write(self.dropped, self.memory.read(self.dropped) + 1)


def test_host_order_checks_before_writing_and_reports_a_drop():
    regmap = make_map(order_queue=True)
    driver = DroppingCard(regmap)
    driver.submit = regmap["order_entry.host_submit"].address
    driver.dropped = regmap["order_entry.host_dropped"].address
    card = Card(driver, regmap)
    before = len(card.driver.log)
    with pytest.raises(RegisterValueError):
        card.submit_order(side="B", quantity=1 << 32, price=1, user_ref_num=1)
    with pytest.raises(TickwireError, match="action must be one of"):
        card.submit_order(side="B", quantity=1, price=1, user_ref_num=1, action="Z")
    with pytest.raises(CardFeatureError, match="no display"):
        card.submit_order(side="B", quantity=1, price=1, user_ref_num=1, display=ord("Y"))
    assert not [e for e in card.driver.log[before:] if e[0] == "w"]
    with pytest.raises(OrderQueueFull, match="dropped"):
        card.submit_order(side="B", quantity=1, price=1)


def test_events_come_from_the_driver(card):
    event = Event(EventType.GAP, 10, 0, fields={"sequence_number": 5, "message_count": 2})
    card.driver.pending = [event]
    assert card.events() == [event]
    assert card.events() == []


def test_context_manager_closes_the_driver(regmap):
    with Card(FakeCard(regmap), regmap) as card:
        pass
    assert card.driver.closed


def test_event_ring_registers_are_programmed_on_connect():
    regs = [_reg("id", "magic", 0, 32, "ro"), _reg("id", "regmap_version", 1, 16, "ro"),
            _reg("risk", "kill", 64, 1, "rw"), _reg("risk", "slot", 65, 16, "rw"),
            _reg("risk", "max_order_quantity", 66, 32, "rw", indexed_by="risk.slot"),
            _reg("event_ring", "address", 128, 64, "rw"),
            _reg("event_ring", "entries", 130, 32, "rw"),
            _reg("event_ring", "enable", 131, 1, "rw")]
    regmap = RegisterMap.from_dict({
        "format": "tickwire-regmap", "version": 1, "word_bytes": 4,
        "constants": {"regmap_version": 7, "magic": MAGIC},
        "registers": {f"{r['stage']}.{r['name']}": r for r in regs}})

    class RingCard(FakeCard):
        def event_ring_registers(self):
            return {"address": 0x1_2345_6000, "entries": 4096}

    card = Card(RingCard(regmap), regmap)
    assert card.event_ring.address == 0x1_2345_6000 and card.event_ring.entries == 4096
    assert [e for e in card.driver.log if e[0] == "w"][-1] == ("w", 131, 1)  # enable last
    plain = Card(RingCard(make_map()), make_map())  # no events stage: nothing written
    assert not [e for e in plain.driver.log if e[0] == "w"]
