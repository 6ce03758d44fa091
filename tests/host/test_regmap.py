"""Tests of host/regmap.py: loading the register map and register access over a transport."""

import copy
import json
import types

import pytest

from tickwire.host import regmap as regmap_module
from tickwire.host.errors import TickwireError
from tickwire.host.regmap import (
    IdentityError, MemoryTransport, Register, RegisterAccessError, RegisterMap, RegisterMapError,
    Registers, RegisterValueError, Transport, check_identity,
)

MAGIC = 0x54574952


def _register(stage, name, address, width, access, reset=0, description=""):
    return {"stage": stage, "name": name, "address": address, "size": -(-width // 32),
            "width": width, "access": access, "reset": reset, "description": description}


# A small made-up map (not the generated one): one stage window of 64 words per stage.
SAMPLE = {
    "format": "tickwire-regmap", "version": 1, "word_bytes": 4,
    "constants": {"regmap_version": 7, "magic": MAGIC, "clock_hz": 156250000},
    "registers": {f"{r['stage']}.{r['name']}": r for r in (
        _register("id", "magic", 0, 32, "ro", MAGIC, "'TWIR'"),
        _register("id", "regmap_version", 1, 32, "ro", 7),
        _register("id", "cycles", 2, 64, "ro"),
        _register("trigger", "side", 128, 8, "rw", ord("B")),
        _register("trigger", "fired", 129, 32, "ro"),
        _register("net_tx", "dst_mac", 66, 48, "rw", 0x02_00_00_00_00_01),
        _register("risk", "kill", 192, 1, "rw"),
        _register("risk", "max_order_quantity", 193, 32, "rw", 0, "largest quantity accepted"),
        _register("risk", "max_order_notional", 194, 64, "rw"),
    )},
}


@pytest.fixture
def regmap():
    return RegisterMap.from_dict(SAMPLE)


@pytest.fixture
def transport(regmap):
    return MemoryTransport.with_resets(regmap)


@pytest.fixture
def regs(regmap, transport):
    return Registers(regmap, transport)


def _broken(**changes):
    d = copy.deepcopy(SAMPLE)
    for key, value in changes.items():
        d[key] = value
    return d


def _broken_register(key, **changes):
    d = copy.deepcopy(SAMPLE)
    d["registers"][key].update(changes)
    return d


# -- RegisterMap ----------------------------------------------------------------------------------

def test_lookup_by_qualified_name(regmap):
    r = regmap["risk.max_order_quantity"]
    assert r == Register(name="max_order_quantity", stage="risk", address=193, size=1, width=32,
                         access="rw", reset=0, description="largest quantity accepted")
    assert r.qualified_name == "risk.max_order_quantity"
    assert "risk.kill" in regmap and "risk.nothing" not in regmap
    assert regmap.get("risk.nothing") is None
    assert regmap.regmap_version == 7 and regmap.magic == MAGIC
    assert regmap.constants["clock_hz"] == 156250000


def test_unknown_register_names_the_stage_registers(regmap):
    with pytest.raises(RegisterMapError, match=r"'risk.nothing'.*kill, max_order_quantity"):
        regmap["risk.nothing"]
    with pytest.raises(RegisterMapError, match=r"stages: id, net_tx, trigger, risk"):
        regmap["nothing.kill"]


def test_iteration_in_address_order_and_by_stage(regmap):
    assert [r.address for r in regmap] == sorted(r["address"] for r in SAMPLE["registers"].values())
    assert len(regmap) == len(SAMPLE["registers"])
    assert regmap.stages() == ("id", "net_tx", "trigger", "risk")
    assert [r.name for r in regmap.stage("risk")] == ["kill", "max_order_quantity",
                                                      "max_order_notional"]
    assert list(regmap.by_stage()) == list(regmap.stages())
    with pytest.raises(RegisterMapError, match="no stage 'ouch'"):
        regmap.stage("ouch")


def test_to_dict_round_trip(regmap):
    again = RegisterMap.from_dict(json.loads(json.dumps(regmap.to_dict())))
    assert list(again) == list(regmap)
    assert dict(again.constants) == SAMPLE["constants"]


def test_load_file(tmp_path):
    path = tmp_path / "registers.json"
    path.write_text(json.dumps(SAMPLE))
    regmap = RegisterMap.load(path)
    assert regmap["id.cycles"].size == 2
    assert regmap.source == str(path)
    assert RegisterMap.load(str(path))["id.cycles"].width == 64


def test_load_packaged_map(tmp_path, monkeypatch):
    (tmp_path / "registers.json").write_text(json.dumps(SAMPLE))
    packages = []

    def files(package):
        packages.append(package)
        return tmp_path
    monkeypatch.setattr(regmap_module, "resources", types.SimpleNamespace(files=files))
    assert RegisterMap.load().regmap_version == 7
    assert packages == ["tickwire.host"]


def test_missing_packaged_map_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(regmap_module, "resources",
                        types.SimpleNamespace(files=lambda package: tmp_path))
    with pytest.raises(RegisterMapError, match=r"registers\.json.*not found"):
        RegisterMap.load()


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(RegisterMapError, match=r"nothing\.json not found"):
        RegisterMap.load(tmp_path / "nothing.json")


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"format": "tickwire-regmap",\n "version": }\n')
    with pytest.raises(RegisterMapError, match=r"bad\.json is not valid JSON.*line 2"):
        RegisterMap.load(path)


def test_errors_are_tickwire_errors(tmp_path):
    with pytest.raises(TickwireError):
        RegisterMap.load(tmp_path / "nothing.json")


@pytest.mark.parametrize("d, message", [
    ([], "top level must be an object"),
    (_broken(format="litex-csr"), "format must be 'tickwire-regmap'"),
    (_broken(version=2), "version 2 is not supported"),
    (_broken(word_bytes=8), "word_bytes must be 4"),
    (_broken(constants={"magic": MAGIC}), "constant 'regmap_version' must be an integer"),
    (_broken(registers=[]), "'registers' must be an object"),
    (_broken_register("risk.kill", access="wo"), r"'risk.kill': access must be one of"),
    (_broken_register("risk.kill", address="0xc0"), r"'risk.kill': 'address' must be an integer"),
    (_broken_register("risk.kill", width=True), r"'risk.kill': 'width' must be an integer"),
    (_broken_register("risk.kill", name="stop"), r"key must be 'stage.name', i.e. 'risk.stop'"),
    (_broken_register("risk.kill", width=33), r"33 bits take 2 words, not size 1"),
    (_broken_register("risk.kill", reset=2), r"reset 2 does not fit 1 bits"),
    (_broken_register("risk.kill", address=193), r"word 0xc1 is also used by"),
    (_broken_register("id.cycles", address=0), r"word 0x0 is also used by 'id.magic'"),
])
def test_malformed_map(d, message):
    with pytest.raises(RegisterMapError, match=message):
        RegisterMap.from_dict(d, source="sample.json")


# -- Register -------------------------------------------------------------------------------------

def test_words_least_significant_first(regmap):
    r = regmap["risk.max_order_notional"]
    assert r.addresses == range(194, 196)
    assert r.to_words(0x1122334455667788) == [0x55667788, 0x11223344]
    assert r.from_words([0x55667788, 0x11223344]) == 0x1122334455667788


# -- Registers ------------------------------------------------------------------------------------

def test_memory_transport_is_a_transport(transport):
    assert isinstance(transport, Transport)
    assert transport.read(12345) == 0
    with pytest.raises(RegisterValueError):
        transport.write(0, 1 << 32)


def test_attribute_write_and_read(regs, transport):
    regs.risk.max_order_quantity = 500
    assert transport.words[193] == 500
    assert regs.risk.max_order_quantity == 500
    regs.risk.kill = True
    assert regs.risk.kill == 1
    assert regs.trigger.side == ord("B")  # the reset value


def test_read_and_write_by_name(regs):
    regs.write("risk.max_order_quantity", 7)
    assert regs.read("risk.max_order_quantity") == 7


def test_multi_word_write_splits_least_significant_word_first(regs, transport):
    writes = []
    original = transport.write
    transport.write = lambda address, value: (writes.append((address, value)),
                                              original(address, value))[1]
    regs.risk.max_order_notional = 0x0000_0001_0000_0002
    assert writes == [(194, 2), (195, 1)]
    regs.net_tx.dst_mac = 0xAABB_CCDD_EEFF
    assert writes[2:] == [(66, 0xCCDD_EEFF), (67, 0xAABB)]
    assert regs.net_tx.dst_mac == 0xAABB_CCDD_EEFF


def test_multi_word_read(regs, transport):
    transport.words[2], transport.words[3] = 0x89AB_CDEF, 0x0123_4567
    assert regs.id.cycles == 0x0123_4567_89AB_CDEF


def test_write_to_read_only_register_raises(regs, transport):
    with pytest.raises(RegisterAccessError, match=r"id\.cycles is read-only"):
        regs.id.cycles = 1
    with pytest.raises(RegisterAccessError, match=r"trigger\.fired is read-only"):
        regs.write("trigger.fired", 0)
    assert transport.words[2] == 0 and transport.words[129] == 0


@pytest.mark.parametrize("name, value, message", [
    ("risk.kill", 2, r"risk\.kill: 2 \(0x2\) does not fit 1 bits"),
    ("risk.max_order_quantity", 1 << 32, "does not fit 32 bits"),
    ("net_tx.dst_mac", 1 << 48, "does not fit 48 bits"),
    ("risk.max_order_quantity", -1, "negative"),
    ("risk.max_order_quantity", 1.0, "must be an integer"),
    ("risk.max_order_quantity", "500", "must be an integer"),
])
def test_value_wider_than_register_raises(regs, transport, name, value, message):
    before = dict(transport.words)
    with pytest.raises(RegisterValueError, match=message):
        regs.write(name, value)
    assert transport.words == before


def test_unknown_names_raise_attribute_error(regs):
    with pytest.raises(AttributeError, match=r"no stage 'ouch'.*id, net_tx, trigger, risk"):
        regs.ouch
    with pytest.raises(AttributeError, match=r"no register 'max_quantity' in stage 'risk'"):
        regs.risk.max_quantity
    with pytest.raises(AttributeError, match=r"no register 'max_quantity'"):
        regs.risk.max_quantity = 1
    assert not hasattr(regs.risk, "max_quantity")
    assert "max_order_quantity" in dir(regs.risk) and "risk" in dir(regs)


def test_transport_word_out_of_range(regmap):
    class Broken:
        def read(self, address):
            return 1 << 32

        def write(self, address, value):
            pass
    with pytest.raises(RegisterValueError, match="not a 32-bit word"):
        Registers(regmap, Broken()).risk.max_order_quantity


def test_stage_name_clashing_with_registers_api():
    d = copy.deepcopy(SAMPLE)
    d["registers"]["read.x"] = _register("read", "x", 300, 8, "rw")
    with pytest.raises(RegisterMapError, match="clashes"):
        Registers(RegisterMap.from_dict(d), MemoryTransport())


# -- check_identity -------------------------------------------------------------------------------

def test_check_identity_passes_on_matching_card(regs):
    check_identity(regs)


def test_check_identity_wrong_magic(regs, transport):
    transport.words[0] = 0xFFFF_FFFF
    with pytest.raises(IdentityError, match=r"id\.magic reads 0xffffffff, not 0x54574952"):
        check_identity(regs)


def test_check_identity_wrong_version(regs, transport):
    transport.words[1] = 6
    with pytest.raises(IdentityError, match=r"id\.regmap_version reads 6.*version 7"):
        check_identity(regs)
