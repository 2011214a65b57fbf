"""What every config section shares: forbidding unknown keys, the config error, absolute local paths."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _absolute(value: str) -> str:
    """Absolute path for a local path; URIs (``s3://``, ``file://``) unchanged."""
    if "://" in value:
        return value
    return str(Path(value).expanduser().absolute())


def _absolute_sqlite(uri: str) -> str:
    """Make the file of a relative ``sqlite:///rel/path.db`` URI absolute; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + _absolute(uri[len(prefix) :])
    return uri

