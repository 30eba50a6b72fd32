"""Agent config for GPS from gpsd: `gps_source`, `gpsd_host`, `gpsd_port`, checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_agent_config
from edge_agent.errors import AgentConfigError


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\n" + body)
    return path


def test_gpsd_alone_is_a_sensor_and_has_defaults(tmp_path: Path) -> None:
    cfg = load_agent_config(write(tmp_path, 'gps_source = "gpsd"\n'))
    assert (cfg.gps_source, cfg.gpsd_host, cfg.gpsd_port) == ("gpsd", "127.0.0.1", 2947)
    assert AgentConfig(gps_port="/dev/ttyUSB0").validate().gps_source == "serial"


@pytest.mark.parametrize(("body", "message"), [
    ('gps_source = "glonass"\n', "gps_source must be one of serial, gpsd"),
    ('gps_source = "gpsd"\ngps_port = "/dev/ttyUSB0"\n', 'gps_port is for gps_source = "serial"'),
    ('gps_source = "gpsd"\ngpsd_port = 70000\n', "gpsd_port 70000 is not a port number"),
    ('gps_source = "gpsd"\ngpsd_port = "2947"\n', "gpsd_port must be int"),
])
def test_bad_gpsd_settings_are_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        load_agent_config(write(tmp_path, body))
