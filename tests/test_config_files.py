"""Config files: unknown keys, wrong types and TOML syntax errors name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_agent_config
from edge_agent.errors import AgentConfigError
from ledger_node.config import load_config
from ledger_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_agent_config_loads_values_and_keeps_defaults(tmp_path: Path) -> None:
    cfg = load_agent_config(write(tmp_path, '[agent]\ndevice_id = "truck-9"\n'
                                            'gps_port = "/dev/ttyUSB0"\ngps_interval_s = 2\n'))
    assert (cfg.device_id, cfg.gps_port, cfg.gps_interval_s, cfg.broker_port) == \
        ("truck-9", "/dev/ttyUSB0", 2.0, 1883)
    assert cfg.token == "truck-9"


def test_agent_config_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ndevice_id = "t1"\n\ngps_prot = "/dev/ttyS0"\n')
    with pytest.raises(AgentConfigError, match=r"c\.toml, line 4: unknown setting 'gps_prot'"):
        load_agent_config(path)


def test_agent_config_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ngps_port = "/dev/x"\nbroker_port = "1883"\n')
    with pytest.raises(AgentConfigError, match="line 3: broker_port must be int"):
        load_agent_config(path)


def test_agent_config_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=r"line 2, column"):
        load_agent_config(write(tmp_path, '[agent]\ndevice_id = = "x"\n'))


@pytest.mark.parametrize("text, message", [
    ('[agent]\ndevice_id = "a/b"\ngps_port = "/dev/x"\n', "device_id 'a/b'"),
    ('[agent]\ngps_port = "/dev/x"\nbroker_port = 70000\n', "not a port number"),
    ('[agent]\ngps_port = "/dev/x"\nresend_after_s = 0\n', "resend_after_s must be between"),
    ('[agent]\n', "no sensor configured"),
])
def test_agent_config_absurd_values_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        load_agent_config(write(tmp_path, text))


def test_node_config_unknown_key_and_bad_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2: unknown setting 'api_prot'"):
        load_config(write(tmp_path, '[node]\napi_prot = 1\n'))
    with pytest.raises(ConfigError, match="block_interval_ms must be between"):
        load_config(write(tmp_path, '[node]\nblock_interval_ms = 1\n'))


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
