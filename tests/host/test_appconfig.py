"""Tests of host/appconfig.py: the appliance config file, its key locator, plan, diff and apply."""

import json
import textwrap

import pytest

from tickwire.host import appconfig, cli
from tickwire.host.appconfig import (
    ApplyError, KeyLocator, apply, diff, format_path, load_config, parse_config, symbol_value)
from tickwire.host.config import ConfigError
from tickwire.host.journal import Journal, JournalReader, RecordType
from tickwire.host.regmap import MemoryTransport, RegisterMap


def _register(stage, name, address, width, access, reset=0, indexed_by=""):
    r = {"stage": stage, "name": name, "address": address, "size": -(-width // 32),
         "width": width, "access": access, "reset": reset, "description": ""}
    if indexed_by:
        r["indexed_by"] = indexed_by
    return r


# A made-up map shaped like the gateware's: per-slot and per-session risk registers behind
# selectors, one trigger rule, two tracked-name slots.
SAMPLE = {
    "format": "tickwire-regmap", "version": 1, "word_bytes": 4,
    "constants": {"regmap_version": 3, "magic": 0x54574952},
    "registers": {f"{r['stage']}.{r['name']}": r for r in (
        _register("id", "magic", 0, 32, "ro"),
        _register("net_rx", "mac_address", 16, 48, "rw"),
        _register("net_rx", "multicast_group", 18, 32, "rw"),
        _register("net_rx", "udp_port", 19, 16, "rw"),
        _register("net_rx_b", "multicast_group", 20, 32, "rw"),
        _register("net_rx_b", "udp_port", 21, 16, "rw"),
        _register("net_tx", "dst_ip", 32, 32, "rw"),
        _register("net_tx", "dst_port", 33, 16, "rw"),
        _register("net_tx", "src_port", 34, 16, "rw"),
        _register("symbols", "filter_enable", 48, 1, "rw"),
        _register("symbols", "track_name_0", 50, 64, "rw"),
        _register("symbols", "track_name_1", 52, 64, "rw"),
        _register("risk", "kill", 64, 1, "rw"),
        _register("risk", "kill_session", 65, 4, "rw"),
        _register("risk", "limit_slot", 66, 16, "rw"),
        _register("risk", "max_order_quantity", 67, 24, "rw", indexed_by="risk.limit_slot"),
        _register("risk", "max_order_notional", 68, 56, "rw", indexed_by="risk.limit_slot"),
        _register("risk", "position", 70, 25, "ro", indexed_by="risk.limit_slot"),
        _register("risk", "limit_session", 71, 8, "rw"),
        _register("risk", "max_open_notional", 72, 56, "rw", indexed_by="risk.limit_session"),
        _register("risk", "rejected", 74, 32, "ro"),
        _register("trigger", "enable", 80, 1, "rw"),
        _register("trigger", "stock_locate", 81, 16, "rw"),
        _register("trigger", "side", 82, 8, "rw", reset=ord("B")),
        _register("trigger", "price_limit", 83, 32, "rw"),
        _register("trigger", "quantity", 84, 32, "rw"),
        _register("ouch", "cl_ord_id_prefix", 96, 32, "rw"),
    )},
}

GOOD = """\
[card]
driver = "sim"
socket = "/run/tickwire-sim.sock"

[[feeds]]
name = "itch"
a = { interface = "eth1", group = "233.54.12.111", port = 26477, mac = "02:00:00:00:00:0a" }
[feeds.b]
interface = "eth2"
group = "233.49.196.111"
port = 26478

[[sessions]]
name = "ouch1"
host = "10.1.1.10"
port = 20001
username = "TWIR01"
password_env = "OUCH1_PASSWORD"
card = true
local_port = 40001

[[sessions]]
name = "ouch2"
host = "ouch2.example"
port = 20002
username = "TWIR02"
password = "s3cret"

[symbols]
tracked = ["AAPL", "MSFT"]
filter = true

[risk]
kill = false
max_order_quantity = 1000
max_order_notional = "250000.50"
max_open_notional = 5_000_000_0000

[risk.symbols.MSFT]
max_order_quantity = 200

[risk.sessions.ouch2]
max_open_notional = "1000000"
kill = true

[[trigger.rules]]
enable = true
stock_locate = 13
side = "S"
price_limit = "183.25"
quantity = 100

[registers]
"ouch.cl_ord_id_prefix" = "TWIR"
"""

ENV = {"OUCH1_PASSWORD": "from-env"}


@pytest.fixture
def regmap():
    return RegisterMap.from_dict(SAMPLE)


def _parse(text, regmap, environ=ENV):
    return parse_config(textwrap.dedent(text), source="app.toml", regmap=regmap, environ=environ)


def _error(text, regmap, environ=ENV):
    with pytest.raises(ConfigError) as e:
        _parse(text, regmap, environ)
    return str(e.value)


# -- locator ----------------------------------------------------------------------------------------

def test_locator_finds_tables_keys_and_array_entries():
    text = textwrap.dedent('''\
        # comment [not.a.table]
        title = """multi
        line = 3
        """
        [card]
        driver = "sim"  # trailing comment
        "quoted key" = 1
        [[feeds]]
        name = "one"
        a = { interface = "x", port = 1 }
        [feeds.b]
        port = 2
        [[feeds]]
        name = "two"
        list = [
          1,
          2,
        ]
        after = 'literal # not a comment'
        [risk]
        symbols.AAPL.max_order_quantity = 5
        [risk.sessions."odd name"]
        kill = true
        [[trigger.rules]]
        side = "B"
        [[trigger.rules]]
        side = "S"
        ''')
    loc = KeyLocator(text)
    assert loc.line(["title"]) == 2
    assert loc.line(["line"]) is None  # inside the multi-line string
    assert loc.line(["card"]) == 5
    assert loc.line(["card", "driver"]) == 6
    assert loc.line(["card", "quoted key"]) == 7
    assert loc.line(["feeds", 0]) == 8
    assert loc.line(["feeds", 0, "name"]) == 9
    assert loc.line(["feeds", 0, "a", "port"]) == 10      # inside an inline table: its key
    assert loc.line(["feeds", 0, "b", "port"]) == 12
    assert loc.line(["feeds", 1, "name"]) == 14
    assert loc.line(["feeds", 1, "list", 1]) == 15
    assert loc.line(["feeds", 1, "after"]) == 19
    assert loc.line(["risk", "symbols", "AAPL", "max_order_quantity"]) == 21
    assert loc.line(["risk", "sessions", "odd name", "kill"]) == 23
    assert loc.line(["trigger", "rules", 1, "side"]) == 27
    assert loc.line(["trigger", "rules", 0, "side"]) == 25
    assert loc.line(["nothing"]) is None
    assert format_path(["risk", "sessions", "odd name", "kill"]) == 'risk.sessions."odd name".kill'
    assert format_path(["sessions", 1, "port"]) == "sessions[1].port"


# -- parsing and plan -----------------------------------------------------------------------------

def test_good_config_and_its_writes(regmap):
    config = _parse(GOOD, regmap)
    assert config.card.driver_config() == {"driver": "sim", "socket": "/run/tickwire-sim.sock"}
    assert str(config.feeds[0].a.group) == "233.54.12.111" and config.feeds[0].b.port == 26478
    assert [s.password for s in config.sessions] == ["from-env", "s3cret"]
    assert "s3cret" not in repr(config.sessions[1])
    assert config.session_number("ouch2") == 1
    writes = {w.name: w for w in config.writes}
    assert writes["net_rx.multicast_group"].value == 0xE9360C6F
    assert writes["net_rx.mac_address"].value == 0x02000000000A
    assert writes["net_rx_b.udp_port"].value == 26478
    assert writes["net_tx.dst_ip"].value == 0x0A01010A and writes["net_tx.src_port"].value == 40001
    assert writes["symbols.track_name_1"].value == symbol_value("MSFT")
    assert symbol_value("AB") == int.from_bytes(b"AB      ", "little")
    assert writes["symbols.filter_enable"].value == 1
    assert writes["risk.kill"].value == 0
    # Per slot: [risk] is the default of every tracked symbol, [risk.symbols.MSFT] overrides.
    assert writes["risk.max_order_quantity[0]"].value == 1000
    assert writes["risk.max_order_quantity[1]"].value == 200
    assert writes["risk.max_order_quantity[1]"].select == ("risk.limit_slot", 1)
    assert writes["risk.max_order_notional[0]"].value == 250000_5000
    assert writes["risk.max_open_notional[0]"].value == 5_000_000_0000
    assert writes["risk.max_open_notional[1]"].value == 1_000_000_0000
    assert writes["risk.max_open_notional[1]"].select == ("risk.limit_session", 1)
    assert writes["risk.kill_session"].value == 0b10
    assert writes["trigger.side"].value == ord("S")
    assert writes["trigger.price_limit"].value == 183_2500
    assert writes["ouch.cl_ord_id_prefix"].value == 0x54574952
    assert writes["risk.max_order_quantity[1]"].key == "risk.symbols.MSFT.max_order_quantity"


@pytest.mark.parametrize("edit, line, message", [
    (("driver = \"sim\"", "driver = \"usb\""), 2, "card.driver: 'usb' is not a driver"),
    (("socket = ", "colour = 1\nsocket = "), None, None),  # driver options pass through
    (("port = 26478", "port = 70000"), 11, "feeds[0].b.port: port 70000 is not in 1..65535"),
    (("group = \"233.49.196.111\"", "group = \"10.0.0.1\""), 10,
     "feeds[0].b.group: 10.0.0.1 is not a multicast group"),
    (("password_env = \"OUCH1_PASSWORD\"", "password_env = \"NOPE\""), 18,
     "sessions[0].password_env: environment variable NOPE is not set"),
    (("password = \"s3cret\"", "pasword = \"s3cret\""), 27, "sessions[1].pasword: unknown key"),
    (("username = \"TWIR02\"", "username = 7"), 26,
     "sessions[1].username: must be a string, not an integer 7"),
    (("[risk.symbols.MSFT]", "[risk.symbols.IBM]"), 39,
     "risk.symbols.IBM: IBM is not in [symbols] tracked"),
    (("kill = false", "kill = 2"), 34, "risk.kill: register risk.kill: 2 (0x2) does not fit"),
    (("max_order_quantity = 1000", "max_position = 1000"), 35,
     "risk.max_position: not a writable register of stage risk"),
    (("\"250000.50\"", "\"1.00001\""), 36, "has more than 4 decimals"),
    (("quantity = 100\n", "quantity = 100\n[[trigger.rules]]\nenable = false\n"), 52,
     "trigger.rules[1]: the card has one trigger rule"),
    (("side = \"S\"", "side = \"X\""), 49, "side must be 'B' or 'S'"),
    (("\"ouch.cl_ord_id_prefix\" = \"TWIR\"", "\"risk.rejected\" = 1"), 54,
     "registers.\"risk.rejected\": register risk.rejected is read-only"),
    (("\"ouch.cl_ord_id_prefix\" = \"TWIR\"", "\"net_tx.dst_port\" = 1"), 54,
     "sets net_tx.dst_port, which sessions[0].port sets already"),
    (("tracked = [\"AAPL\", \"MSFT\"]", "tracked = [\"AAPL\", \"MSFT\", \"IBM\"]"), 30,
     "symbols.tracked: 3 symbols, but the card tracks at most 2"),
    (("tracked = [\"AAPL\", \"MSFT\"]", "tracked = [\"AAPL\", \"msft\"]"), 30,
     "symbols.tracked[1]: 'msft' is not a stock symbol"),
])
def test_errors_name_file_line_and_key(regmap, edit, line, message):
    old, new = edit
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    if message is None:
        _parse(text, regmap)
        return
    error = _error(text, regmap)
    assert error.startswith(f"app.toml:{line}: "), error
    assert message in error, error


def test_whole_file_errors(regmap, tmp_path):
    assert "app.toml: not valid TOML" in _error("[card\n", regmap)
    assert "card: missing: the file needs a [card] table" in _error("[symbols]\n", regmap)
    assert "app.toml:1: extra: unknown key" in _error("extra = 1\n[card]\ndriver='sim'\n", regmap)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", regmap)
    # [card] map is read relative to the file.
    (tmp_path / "regs.json").write_text(json.dumps(SAMPLE))
    (tmp_path / "app.toml").write_text('[card]\ndriver = "pcie"\nmap = "regs.json"\n'
                                       '[risk]\nkill = true\n')
    config = load_config(tmp_path / "app.toml")
    assert [(w.name, w.value) for w in config.writes] == [("risk.kill", 1)]
    (tmp_path / "app.toml").write_text('[card]\ndriver = "pcie"\nmap = "nope.json"\n')
    with pytest.raises(ConfigError, match=r"app.toml:3: card.map: register map .* not found"):
        load_config(tmp_path / "app.toml")


# -- diff and apply ---------------------------------------------------------------------------------

class Card(MemoryTransport):
    """Memory with the selector semantics of indexed registers, and a write that can fail."""

    def __init__(self, regmap, fail_at=None, fail_after=None):
        super().__init__()
        self.regmap = regmap
        self.tables = {}          # (first word address, index) -> words
        self.selectors = {}       # indexed register's word address -> selector address
        for r in regmap:
            if r.indexed_by:
                for a in r.addresses:
                    self.selectors[a] = regmap[r.indexed_by].address
        self.writes = 0
        self.fail_at = fail_at      # fail the write to this address
        self.fail_after = fail_after  # fail every write after this many

    def read(self, address):
        if address in self.selectors:
            return self.tables.get((address, self.words.get(self.selectors[address], 0)), 0)
        return super().read(address)

    def write(self, address, value):
        self.writes += 1
        if self.fail_after is not None and self.writes > self.fail_after:
            raise OSError("card went away")
        if address == self.fail_at:
            raise OSError(f"write to 0x{address:x} timed out")
        if address in self.selectors:
            self.tables[(address, self.words.get(self.selectors[address], 0))] = value
            return
        super().write(address, value)

    def state(self):
        selects = set(self.selectors.values())  # selectors are not state; unwritten reads 0
        return ({a: v for a, v in self.words.items() if a not in selects and v},
                {k: v for k, v in self.tables.items() if v})


def test_apply_writes_what_differs_then_nothing(regmap, tmp_path):
    config = _parse(GOOD, regmap)
    card = Card(regmap)
    card.write(regmap["risk.kill"].address, 0)  # already as configured
    changes = diff(config.writes, card, regmap)
    assert "risk.kill" not in [ch.write.name for ch in changes]
    assert len(changes) == len(config.writes) - 1
    with Journal(tmp_path) as journal:
        done = apply(config.writes, card, regmap, journal=journal)
    assert [ch.write for ch in done] == [ch.write for ch in changes]
    assert diff(config.writes, card, regmap) == []
    # The per-slot values landed in their slots.
    quantity = regmap["risk.max_order_quantity"].address
    assert card.tables[(quantity, 0)] == 1000 and card.tables[(quantity, 1)] == 200
    records = list(JournalReader(tmp_path))
    assert len(records) == len(done)
    assert all(r.type == RecordType.CONFIG_CHANGE for r in records)
    assert {r.fields["register"] for r in records} >= {"risk.max_order_quantity[1]"}
    assert apply(config.writes, card, regmap) == []


@pytest.mark.parametrize("fail", ["risk.max_order_quantity", "trigger.quantity",
                                  "ouch.cl_ord_id_prefix", "net_rx.mac_address+1"])
def test_apply_is_all_or_nothing(regmap, fail):
    config = _parse(GOOD, regmap)
    name, _, word = fail.partition("+")
    card = Card(regmap)
    card.write(regmap["trigger.quantity"].address, 7)
    card.tables[(regmap["risk.max_order_quantity"].address, 1)] = 99
    card.fail_at = regmap[name].address + int(word or 0)
    before = card.state()
    with pytest.raises(ApplyError, match=rf"writing {name}.* failed: .*timed out; the \d+ "
                                         rf"register\(s\) written were restored"):
        apply(config.writes, card, regmap)
    assert card.state() == before


def test_a_failed_restore_is_reported(regmap):
    config = _parse(GOOD, regmap)
    probe = Card(regmap)
    diff(config.writes, probe, regmap)  # diff writes selectors: count them
    card = Card(regmap, fail_after=probe.writes + 5)
    with pytest.raises(ApplyError, match="PARTLY CONFIGURED"):
        apply(config.writes, card, regmap)


def test_a_write_that_does_not_stick_is_undone(regmap):
    config = _parse(GOOD, regmap)

    class Deaf(Card):
        def write(self, address, value):
            if address == regmap["trigger.side"].address:
                return  # ignored
            super().write(address, value)

    card = Deaf(regmap)
    before = card.state()
    with pytest.raises(ApplyError, match="trigger.side reads back 0x0 after writing 0x53"):
        apply(config.writes, card, regmap)
    assert card.state() == before


# -- command line --------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, monkeypatch):
    (tmp_path / "regs.json").write_text(json.dumps(SAMPLE))
    (tmp_path / "app.toml").write_text(GOOD)
    monkeypatch.setenv("OUCH1_PASSWORD", "x")
    return tmp_path


def test_cli_check(files, capsys):
    assert cli.main(["config", "check", "--config", str(files / "app.toml"),
                     "--map", str(files / "regs.json")]) == 0
    out = capsys.readouterr().out
    assert "ok: driver sim, 1 feed(s), 2 session(s), 2 tracked symbol(s)" in out
    assert "risk.max_order_quantity[1]  0xc8" in out
    assert cli.main(["config", "check", "--config", str(files / "app.toml"),
                     "--map", str(files / "regs.json"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"register": "trigger.quantity", "value": "0x64",
            "key": "trigger.rules[0].quantity"} in rows
    (files / "bad.toml").write_text(GOOD.replace("port = 20001", "port = 0"))
    assert cli.main(["config", "check", "--config", str(files / "bad.toml"),
                     "--map", str(files / "regs.json")]) == 2
    assert "bad.toml:16: sessions[0].port: port 0 is not in 1..65535" in capsys.readouterr().err


def test_cli_diff_and_apply_through_the_driver(files, capsys, monkeypatch, regmap):
    card = Card(regmap)
    opened = []

    def open_driver(config):
        opened.append(config)
        return card

    import tickwire.drivers
    monkeypatch.setattr(tickwire.drivers, "open_driver", open_driver, raising=False)
    args = ["--config", str(files / "app.toml"), "--map", str(files / "regs.json")]
    assert cli.main(["config", "diff", *args]) == 0
    writes = load_config(files / "app.toml", regmap).writes
    count = len(writes)
    differ = len(diff(writes, Card(regmap), regmap))
    assert differ == count - 1  # risk.kill = false is what a new card holds
    assert f"{differ} of {count} register(s) differ" in capsys.readouterr().out
    assert card.tables == {}
    assert cli.main(["config", "apply", *args, "--card", "pcie", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == differ
    assert opened[-1] == {"driver": "pcie", "socket": "/run/tickwire-sim.sock"}
    assert cli.main(["config", "diff", *args]) == 0
    assert f"0 of {count} register(s) differ" in capsys.readouterr().out


def test_cli_without_a_card_says_why(files, capsys, monkeypatch):
    (files / "app.toml").write_text(GOOD.replace("/run/tickwire-sim.sock",
                                                 str(files / "no-such.sock")))
    status = cli.main(["config", "diff", "--config", str(files / "app.toml"),
                       "--map", str(files / "regs.json")])
    assert status in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("tickwire: error: ") and len(err.splitlines()) == 1

    import tickwire.drivers
    monkeypatch.delattr(tickwire.drivers, "open_driver")
    assert cli.main(["config", "apply", "--config", str(files / "app.toml"),
                     "--map", str(files / "regs.json")]) == 2
    assert "no tickwire.drivers.open_driver" in capsys.readouterr().err


def test_as_registers_refuses_other_objects(regmap):
    with pytest.raises(TypeError, match="neither named registers nor read/write"):
        appconfig.as_registers(object(), regmap)
