"""Bad serial input: every rejected line gets a reason, and the assembler keeps working.

Fuzzing (hypothesis) checks the one promise that matters on a truck: whatever bytes come
off the wire, ``NmeaAssembler.feed`` returns samples or raises SerialLineError, nothing else.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.collectors.errors import CollectorError, SerialLineError
from edge_agent.collectors.nmea import NmeaAssembler, check_sentence
from edge_agent.errors import EdgeAgentError
from firmware_shims.nmea_gen import sentence

RMC_BODY = "GPRMC,123519.00,A,4807.03800,N,01131.00000,E,022.4,084.4,230394,003.1,W,A"
GGA_BODY = "GPGGA,123519.00,4807.03800,N,01131.00000,E,1,08,0.9,545.4,M,46.9,M,,"
GOOD_RMC = sentence(RMC_BODY).encode() + b"\r\n"
GOOD_GGA = sentence(GGA_BODY).encode() + b"\r\n"


def _with(body_from: str, old: str, new: str) -> bytes:
    assert old in body_from
    return sentence(body_from.replace(old, new, 1)).encode()


BAD_LINES: dict[str, tuple[bytes | str, str]] = {
    "bad checksum": (GOOD_RMC.replace(GOOD_RMC[-4:-2], b"00"), "bad_checksum"),
    "missing checksum": (b"$" + RMC_BODY.encode() + b"\r\n", "missing_checksum"),
    "checksum not hex": (b"$" + RMC_BODY.encode() + b"*G1", "malformed_checksum"),
    "truncated on the wire": (GOOD_RMC[:40], "missing_checksum"),
    "truncated but checksummed": (sentence("GPRMC,123519,A,4807.038,N").encode(), "bad_date"),
    "binary garbage": (bytes(range(0x80, 0x100)) + b"\x00\x01\x02", "no_sentence_start"),
    "overlong": (sentence("GPGSV," + "1," * 50).encode(), "too_long"),
    "non-ASCII bytes": (GOOD_RMC.replace(b"E,022", b"E,0\xe92"), "non_ascii"),
    "non-ASCII text": ("$GPRMC,München*00", "non_ascii"),
    "control character": (_with(RMC_BODY, "E,022", "E,0\x072"), "control_character"),
    "empty": (b"\r\n", "empty"),
    "bad address": (sentence("gprmc,1").encode(), "bad_address"),
    "lat over 90": (_with(RMC_BODY, "4807.03800,N", "9107.03800,N"), "bad_lat"),
    "lat minutes 60": (_with(RMC_BODY, "4807.03800,N", "4860.00000,N"), "bad_lat"),
    "lat no hemisphere": (_with(RMC_BODY, "4807.03800,N", "4807.03800,X"), "bad_lat"),
    "lon over 180": (_with(RMC_BODY, "01131.00000,E", "18101.00000,E"), "bad_lon"),
    "impossible date 30 Feb": (_with(RMC_BODY, "230394", "300294"), "bad_date"),
    "impossible date zeros": (_with(RMC_BODY, "230394", "000000"), "bad_date"),
    "impossible time": (_with(RMC_BODY, "123519.00", "256199.00"), "bad_time"),
    "empty time": (_with(RMC_BODY, "123519.00", ""), "bad_time"),
    "unknown status": (_with(RMC_BODY, ",A,", ",X,"), "bad_status"),
    "speed not a number": (_with(RMC_BODY, "022.4", "fast"), "bad_speed"),
    "negative speed": (_with(RMC_BODY, "022.4", "-22.4"), "bad_speed"),
    "course over 360": (_with(RMC_BODY, "084.4", "384.4"), "bad_course"),
    "GGA quality 9": (_with(GGA_BODY, "E,1,08", "E,9,08"), "bad_quality"),
    "GGA sats not a number": (_with(GGA_BODY, ",08,", ",x8,"), "bad_sats"),
    "GGA fix without position": (_with(GGA_BODY, "4807.03800,N", ","), "bad_lat"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_is_rejected_with_its_reason_and_the_assembler_keeps_working(
    case: str,
) -> None:
    line, reason = BAD_LINES[case]
    assembler = NmeaAssembler()
    with pytest.raises(SerialLineError) as caught:
        assembler.feed(line)
    assert caught.value.reason == reason
    assert isinstance(caught.value, CollectorError)
    assert isinstance(caught.value, EdgeAgentError)
    assert len(caught.value.line) <= SerialLineError.MAX_EVIDENCE
    assert assembler.stats[f"bad:{reason}"] == 1
    assert assembler.stats["bad_lines"] == 1

    samples = assembler.feed(GOOD_RMC) + assembler.feed(GOOD_GGA)
    assert len(samples) == 1
    assert samples[0].values["lat"] == pytest.approx(48.1173, abs=1e-7)


def test_garbage_before_a_sentence_is_dropped_and_the_sentence_kept() -> None:
    assembler = NmeaAssembler()
    assembler.feed(b"\xb5\x62\x01\x07 noise" + GOOD_GGA)
    samples = assembler.feed(b"\xff\xfe" + GOOD_RMC)
    assert len(samples) == 1
    assert assembler.stats["resync"] == 2


def test_check_sentence_accepts_str_and_bytes_and_strips_line_endings() -> None:
    text, resynced = check_sentence(GOOD_RMC.decode())
    assert text == GOOD_RMC.decode().strip() and not resynced
    assert check_sentence(GOOD_RMC.rstrip(b"\r\n") + b"\n") == (text, False)


def test_a_line_of_82_characters_is_accepted_and_83_rejected() -> None:
    filler = "GPGSV,3,1,12," + "x" * 80
    exact = sentence(filler[: 82 - 4])
    assert len(exact) == 82
    check_sentence(exact)
    with pytest.raises(SerialLineError, match="too_long"):
        check_sentence(sentence(filler[: 83 - 4]))


def _assert_only_line_errors(assembler: NmeaAssembler, line: bytes) -> None:
    try:
        samples = assembler.feed(line)
    except SerialLineError:
        return
    for sample in samples:
        assert sample.kind == "gps"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes_raise_nothing_but_serial_line_error(line: bytes) -> None:
    _assert_only_line_errors(NmeaAssembler(), line)


_FIELD = st.one_of(
    st.sampled_from(["", "0", "A", "V", "N", "S", "E", "W", "D", "-1", "360.1", "99", "235960"]),
    st.sampled_from(["240000", "290200", "290201", "9999.99999", "1.2.3", "nan", "1e5", "8"]),
    st.text(alphabet="0123456789.,-+ENSWAVDx", max_size=12),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([RMC_BODY, GGA_BODY]),
    talker=st.sampled_from(["GP", "GN", "GL", "BD"]),
    edits=st.lists(st.tuples(st.integers(1, 14), _FIELD), min_size=1, max_size=4),
    cut=st.integers(1, 16),
)
def test_fuzz_checksummed_sentences_with_mutated_fields(
    base: str, talker: str, edits: list[tuple[int, str]], cut: int
) -> None:
    fields = base.split(",")
    fields[0] = talker + fields[0][2:]
    for index, value in edits:
        if index < len(fields):
            fields[index] = value
    _assert_only_line_errors(NmeaAssembler(), sentence(",".join(fields[:cut])).encode())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([GOOD_RMC, GOOD_GGA, b"$GPGSV*00", b""]),
            st.binary(max_size=40),
            st.builds(
                lambda t, lat: _with(RMC_BODY, "123519.00,A,4807.03800", f"{t},A,{lat}"),
                st.sampled_from(["000000", "235960", "123519.00", "99"]),
                st.sampled_from(["4807.03800", "0000.00000", "8959.99999", ""]),
            ),
        ),
        max_size=30,
    )
)
def test_fuzz_line_sequences_keep_the_assembler_consistent(lines: list[bytes]) -> None:
    assembler = NmeaAssembler()
    for line in lines:
        _assert_only_line_errors(assembler, line)
    for sample in assembler.flush():
        assert -90 <= float(str(sample.values["lat"])) <= 90
    assert assembler.stats["lines"] == len(lines)
