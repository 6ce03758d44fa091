"""Generate the appliance's Verilog and register map: ``python -m tickwire.hdl.build``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from amaranth.hdl import Elaboratable

from .csr import regmap_document, regmap_json, regmap_markdown
from .top import CLOCK_HZ, Appliance

__all__ = ["regmap", "top_regmap", "write_regmap", "main"]

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent
REGMAP_JSON = _ROOT / "host" / "registers.json"
REGMAP_MD = _ROOT / "docs" / "registers.md"


def _silence(obj, seen=None) -> None:
    """Mark a top level built only to read its register tables (never elaborated) and every
    component inside it, so Amaranth does not warn that they went unused."""
    seen = set() if seen is None else seen
    if id(obj) in seen or not isinstance(obj, Elaboratable):
        return
    seen.add(id(obj))
    obj._MustUse__silence = True
    for value in vars(obj).values():
        for item in (value.values() if isinstance(value, dict) else [value]):
            _silence(item, seen)


def regmap(top=None) -> dict:
    """The register map document of a top level with a register bank (default: the appliance,
    as the host loads it)."""
    if top is None:
        top = Appliance()
        _silence(top)
    constants = {"clock_hz": CLOCK_HZ}
    for name in ("order_queue_depth", "rx_buffer_words"):
        if hasattr(top, name):
            constants[name] = getattr(top, name)
    return regmap_document(top.bank, constants)


def top_regmap(top_class) -> dict:
    """The register map document of a freshly built ``top_class()`` (for benches of other tops)."""
    top = top_class()
    _silence(top)
    return regmap(top)


def write_regmap(json_path: Path = REGMAP_JSON, md_path: Path = REGMAP_MD) -> None:
    doc = regmap()
    json_path.write_text(regmap_json(doc))
    md_path.write_text(regmap_markdown(doc))
    logger.info("wrote %s and %s", json_path, md_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickwire.hdl.build", description=__doc__)
    parser.add_argument("--regmap", action="store_true", help="rewrite host/registers.json and docs/registers.md")
    parser.add_argument("--verilog", metavar="FILE", type=Path, help="write the top-level Verilog to FILE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.regmap or args.verilog):
        parser.error("nothing to do: give --regmap and/or --verilog FILE")
    if args.regmap:
        write_regmap()
    if args.verilog:
        from amaranth.back import verilog
        args.verilog.write_text(verilog.convert(Appliance(), name="tickwire_top", emit_src=False))
        logger.info("wrote %s", args.verilog)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
