"""sim/replay.py: the native replay harness against the reference decoder, and its inputs."""

from __future__ import annotations

import pytest

from tickwire.protocols import itch
from tickwire.protocols.itch import record_to_fields
from tickwire.sim.feed import generate_messages, symbol_table
from tickwire.sim.itchfile import ItchFileError, raw_to_pcap, write_raw_itch
from tickwire.sim.replay import (Replay, build_harness, compare_with_model, decode_file,
                                 replay_file, replay_messages)

MESSAGES = 20_000


@pytest.fixture(scope="session")
def harness():
    """Built once per gateware change (minutes), reused from build/native/ afterwards."""
    return build_harness()


@pytest.fixture(scope="session")
def messages():
    return generate_messages(MESSAGES, seed=2025, symbols=symbol_table(20), session_events=True)


@pytest.fixture(scope="session")
def raw_file(tmp_path_factory, messages):
    path = tmp_path_factory.mktemp("replay") / "feed.itch"
    write_raw_itch(path, messages)
    return path


def _assert_matches(records, run: Replay, messages: list[bytes]) -> None:
    comparison = compare_with_model(records, messages)
    assert comparison.differences == []
    assert (comparison.compared, comparison.missing, comparison.extra) == (len(messages), 0, 0)
    assert run.records == len(messages)
    assert run.lost() == {}
    assert run.counters["moldudp64.messages"] == len(messages)
    assert run.counters["itch.decoded"] == len(messages)
    assert run.counters["moldudp64.gaps"] == run.counters["moldudp64.duplicates"] == 0


def test_feed_has_every_generated_type(messages):
    # The generator's types (plus the day's system events) reach the decoder in this feed.
    assert {chr(m[0]) for m in messages} >= set("SRAFECXDUHPIQ")


def test_raw_itch_matches_reference(harness, raw_file, messages):
    run = replay_file(raw_file, harness=harness)
    assert run.expected_messages == MESSAGES
    payloads = list(run.raw())
    unpack = harness.unpacker()
    _assert_matches(map(unpack, payloads), run, messages)
    assert run.messages == MESSAGES
    assert run.cycles > run.frame_bytes // 8  # every byte crossed a 64-bit XGMII

    # The fast path of decode_file and `tickwire sim decode` is record_to_fields, record for record.
    fields_of = harness.fields_of()
    for payload in payloads:
        assert fields_of(payload) == record_to_fields(unpack(payload))
    slots = {f.name: f for f in harness.record_fields}
    type_bits = lambda letter: ord(letter) << slots["message_type"].offset  # noqa: E731
    with pytest.raises(ValueError, match="unknown ITCH 5.0 message type"):
        fields_of(type_bits("Z"))
    # executed_shares is 4 bytes; a record with a bit above them in its slot is refused.
    slot = slots[itch.RECORD_TARGETS["E"]["executed_shares"]]
    assert slot.width > 32
    with pytest.raises(ValueError, match="does not fit"):
        fields_of(type_bits("E") | 1 << (slot.offset + 32))


def test_pcap_matches_reference(harness, raw_file, messages, tmp_path):
    # A capture of another feed (group, port, small datagrams): the filter registers follow it.
    pcap = tmp_path / "feed.pcap"
    raw_to_pcap(raw_file, pcap, feed={"dst_ip": "239.10.20.30", "dst_port": 31000,
                                      "max_messages": 16})
    run = replay_file(pcap, harness=harness)
    assert run.expected_messages is None
    _assert_matches(run, run, messages)
    assert run.frames == -(-MESSAGES // 16)


def test_decode_file_gives_the_spec_fields(harness, raw_file, messages):
    objects = list(decode_file(raw_file, harness=harness))
    assert len(objects) == len(messages)
    for obj, message in zip(objects, messages):
        fields = itch.unpack(message)
        expected = {"type": fields.pop("message_type")}
        expected.update({k: v.rstrip(" ") if isinstance(v, str) else v for k, v in fields.items()})
        assert obj == expected
        assert list(obj) == ["type", *itch.MESSAGES[obj["type"]].field_names[1:]]


def test_malformed_messages_are_counted_not_decoded(harness, messages):
    # Unknown type and wrong lengths travel in the datagrams like any message; the decoder counts
    # them and decodes everything around them.
    good = messages[:300]
    bad = [b"Z" + bytes(19),                       # unknown type
           itch.pack("D", order_reference_number=7) + b"\x00",  # one byte too long
           itch.pack("A")[:-1]]                    # one byte short
    feed = good[:100] + bad[:1] + good[100:200] + bad[1:] + good[200:]
    run = replay_messages(feed, harness=harness, feed={"max_messages": 8})
    comparison = compare_with_model(run, feed)
    assert comparison.ok and comparison.compared == len(good)
    assert run.counters["itch.unknown_type"] == 1
    assert run.counters["itch.bad_length"] == 2
    assert run.counters["itch.decoded"] == len(good)


def test_record_fields_round_trip(harness, messages):
    run = replay_messages(messages[:2000], harness=harness, gap=40)
    for record, message in zip(run, messages):
        assert itch.MESSAGES[chr(message[0])].pack(**{
            k: v for k, v in record_to_fields(record).items() if k != "type"}) == message


def test_truncated_length_prefix_fails_before_the_run(tmp_path, messages):
    path = tmp_path / "cut.itch"
    write_raw_itch(path, messages[:50])
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ItchFileError, match=r"truncated length prefix of message 50 at byte"):
        replay_file(path)


def test_truncated_message_fails(tmp_path, messages):
    path = tmp_path / "cut.itch"
    write_raw_itch(path, messages[:50])
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ItchFileError, match=r"truncated message 49 .* says \d+ bytes, \d+ remain"):
        replay_file(path)


@pytest.mark.parametrize("head, message", [
    (b"\xd4\xc3\xb2\xa0" + bytes(40), r"neither a pcap file \(bad magic d4c3b2a0\) nor raw ITCH"),
    (b"\x0a\x0d\x0d\x0a" + bytes(40), r"pcapng"),
    (b"", r"empty file"),
])
def test_bad_headers(tmp_path, head, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(head)
    with pytest.raises(ItchFileError, match=message):
        replay_file(path)


def test_bad_options(harness):
    with pytest.raises(ValueError, match="gap must be at least 1"):
        Replay([], harness=harness, gap=0)
    with pytest.raises(ValueError, match="unknown register 'net_rx.nope'"):
        Replay([], harness=harness, registers={"net_rx.nope": 1})
    with pytest.raises(ValueError, match="read-only"):
        Replay([], harness=harness, registers={"itch.decoded": 1})


def test_a_replay_runs_once(harness):
    run = Replay([], harness=harness)
    assert run.run() == []
    assert run.counters["id.magic"] == int.from_bytes(b"TWIR", "big")
    with pytest.raises(RuntimeError, match="runs once"):
        run.run()
