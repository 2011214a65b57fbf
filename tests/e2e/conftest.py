"""Helpers for end-to-end tests: free ports and a small config written to a YAML file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from tests.conftest import small_config_dict


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def small_config_file(tmp_path: Path) -> Path:
    data = small_config_dict(tmp_path)
    data["serve"] = {"port": free_port()}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
