"""Agent config for an LLRP reader: `llrp_host`, `llrp_port`, `llrp_antennas`, keepalive."""

from __future__ import annotations

import pytest

from edge_agent.config import AgentConfig, parse_antennas
from edge_agent.errors import AgentConfigError


def test_llrp_reader_alone_is_a_sensor() -> None:
    cfg = AgentConfig(llrp_host="192.168.1.50").validate()
    assert (cfg.llrp_port, cfg.llrp_antenna_ports, cfg.llrp_keepalive_s) == (5084, (0,), 10.0)


@pytest.mark.parametrize(("text", "ports"), [("0", (0,)), ("1", (1,)), ("1,2", (1, 2)),
                                              (" 4, 3 ", (4, 3))])
def test_antenna_lists(text: str, ports: tuple[int, ...]) -> None:
    assert parse_antennas(text) == ports


@pytest.mark.parametrize("text", ["", "a", "1,1", "0,1", "65", "-1", "1;2"])
def test_bad_antenna_lists_are_refused_at_start(text: str) -> None:
    with pytest.raises(AgentConfigError, match="llrp_antennas"):
        AgentConfig(llrp_host="reader", llrp_antennas=text).validate()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("llrp_port", 0, "llrp_port 0 is not a port number"),
    ("llrp_keepalive_s", 0.0, "llrp_keepalive_s must be between"),
])
def test_bad_llrp_settings_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        AgentConfig(llrp_host="reader", **{field: value}).validate()  # type: ignore[arg-type]
