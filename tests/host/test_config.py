"""Tests of host/config.py: register settings from TOML, checked against the register map."""

import pytest

from tickwire.host.config import ConfigError, convert_string, load_register_overrides
from tickwire.host.errors import TickwireError
from tickwire.host.regmap import RegisterMap


def _register(stage, name, address, width, access):
    return {"stage": stage, "name": name, "address": address, "size": -(-width // 32),
            "width": width, "access": access, "reset": 0, "description": ""}


# A small made-up map (not the generated one).
SAMPLE = {
    "format": "tickwire-regmap", "version": 1, "word_bytes": 4,
    "constants": {"regmap_version": 1, "magic": 0x54574952},
    "registers": {f"{r['stage']}.{r['name']}": r for r in (
        _register("id", "magic", 0, 32, "ro"),
        _register("net_tx", "dst_mac", 64, 48, "rw"),
        _register("net_tx", "dst_ip", 66, 32, "rw"),
        _register("net_tx", "dst_port", 67, 16, "rw"),
        _register("trigger", "enable", 128, 1, "rw"),
        _register("trigger", "side", 129, 8, "rw"),
        _register("trigger", "fired", 130, 32, "ro"),
        _register("risk", "max_order_quantity", 192, 32, "rw"),
        _register("risk", "max_order_notional", 193, 64, "rw"),
        _register("ouch", "cl_ord_id_prefix", 256, 32, "rw"),
    )},
}


@pytest.fixture
def regmap():
    return RegisterMap.from_dict(SAMPLE)


def _load(tmp_path, regmap, text):
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return load_register_overrides(path, regmap)


def test_tables_are_stages_and_keys_are_registers(tmp_path, regmap):
    overrides = _load(tmp_path, regmap, """
        [risk]
        max_order_quantity = 500
        max_order_notional = 1_000_000_0000

        [trigger]
        enable = true
        side = "S"
    """)
    assert overrides == {"risk.max_order_quantity": 500,
                         "risk.max_order_notional": 10_000_000_000,
                         "trigger.enable": 1, "trigger.side": ord("S")}
    assert list(overrides) == ["risk.max_order_quantity", "risk.max_order_notional",
                               "trigger.enable", "trigger.side"]


def test_dotted_keys_are_the_same_as_tables(tmp_path, regmap):
    assert _load(tmp_path, regmap, "risk.max_order_quantity = 0x10\n") == {
        "risk.max_order_quantity": 16}


def test_empty_file(tmp_path, regmap):
    assert _load(tmp_path, regmap, "# nothing to set\n") == {}


def test_string_values(tmp_path, regmap):
    overrides = _load(tmp_path, regmap, """
        [net_tx]
        dst_mac = "02:00:5E:00:00:fb"
        dst_ip = "192.168.10.2"
        [ouch]
        cl_ord_id_prefix = "TWIR"
    """)
    assert overrides == {"net_tx.dst_mac": 0x02005E0000FB, "net_tx.dst_ip": 0xC0A80A02,
                         "ouch.cl_ord_id_prefix": 0x54574952}


@pytest.mark.parametrize("text, value", [
    ("aa:bb:cc:dd:ee:ff", 0xAABBCCDDEEFF),
    ("0.0.0.0", 0),
    ("255.255.255.255", 0xFFFFFFFF),
    ("B", 0x42),
    ("TWIRTWIR", 0x5457495254574952),
    ("1.2.3", int.from_bytes(b"1.2.3", "big")),  # not a dotted quad: ASCII
])
def test_convert_string(text, value):
    assert convert_string(text) == value


@pytest.mark.parametrize("text, message", [
    ("", "1 to 8 ASCII characters"),
    ("NINECHARS", "1 to 8 ASCII characters"),
    ("é", "not ASCII"),
    ("10.0.0.256", "not an IPv4 address"),
])
def test_convert_string_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        convert_string(text)


@pytest.mark.parametrize("text, message", [
    ("[mac_rx]\nframes_ok = 1\n", r"settings\.toml: table \[mac_rx\] is not a stage"),
    ("[ouch]\nmax_order_quantity = 1\n",
     r"settings\.toml: \[ouch\] max_order_quantity: no such register in stage 'ouch' "
     r"\(registers: cl_ord_id_prefix\)"),
    ("[trigger]\nfired = 0\n", r"settings\.toml: \[trigger\] fired: register trigger\.fired is "
                               r"read-only"),
    ("[id]\nmagic = 0\n", r"\[id\] magic: register id\.magic is read-only"),
    ("[risk]\nmax_order_quantity = 1.5\n", r"\[risk\] max_order_quantity: value must be an "
                                           r"integer or a string, not float"),
    ("[risk]\nmax_order_quantity = [1]\n", r"\[risk\] max_order_quantity: value must be"),
    ("[risk]\nmax_order_quantity = -1\n", r"\[risk\] max_order_quantity: -1 is negative"),
    ("[risk]\nmax_order_quantity = 4294967296\n",
     r"\[risk\] max_order_quantity: 4294967296 \(0x100000000\) does not fit 32 bits"),
    ("[trigger]\nenable = 2\n", r"\[trigger\] enable: 2 \(0x2\) does not fit 1 bits"),
    ("[trigger]\nside = \"BS\"\n", r"\[trigger\] side: 'BS' is 16979 \(0x4253\), which does not "
                                   r"fit 8 bits"),
    ("[net_tx]\ndst_ip = \"02:00:00:00:00:01\"\n", r"\[net_tx\] dst_ip: .* does not fit 32 bits"),
    ("[net_tx]\ndst_ip = \"10.0.0.300\"\n", r"\[net_tx\] dst_ip: '10\.0\.0\.300' is not an IPv4"),
    ("[net_tx]\ndst_port = \"a long name\"\n", r"\[net_tx\] dst_port: 'a long name' is not a MAC"),
    ("max_order_quantity = 1\n", r"key 'max_order_quantity' is not in a table"),
])
def test_refused_settings_name_file_table_and_key(tmp_path, regmap, text, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, regmap, text)


def test_syntax_error_gives_line(tmp_path, regmap):
    with pytest.raises(ConfigError, match=r"settings\.toml is not valid TOML: .*line 3"):
        _load(tmp_path, regmap, "[risk]\nmax_order_quantity = 1\nmax_order_notional = = 2\n")


def test_missing_file(tmp_path, regmap):
    with pytest.raises(ConfigError, match=r"nothing\.toml not found"):
        load_register_overrides(tmp_path / "nothing.toml", regmap)


def test_config_error_is_a_tickwire_error():
    assert issubclass(ConfigError, TickwireError)


def test_indexed_registers_take_a_table(tmp_path):
    """Per-slot registers (``indexed_by``) take ``{index = value}``; a plain value is refused."""
    regmap = RegisterMap.load()
    path = tmp_path / "slots.toml"
    path.write_text("[risk]\nmax_order_quantity = { 0 = 500, 3 = 10 }\n")
    assert load_register_overrides(path, regmap) == {"risk.max_order_quantity[0]": 500,
                                                     "risk.max_order_quantity[3]": 10}
    path.write_text("[risk]\nmax_order_quantity = 500\n")
    with pytest.raises(ConfigError, match=r"set per slot: give a table of index = value"):
        load_register_overrides(path, regmap)
    path.write_text("[risk]\nmax_order_quantity = { x = 5 }\n")
    with pytest.raises(ConfigError, match=r"index 'x' must be a number"):
        load_register_overrides(path, regmap)
