"""The retrain audit table: one row per decision of the loop's retrain policy, in the lake.

The decisions are the loop's (:mod:`aisys.loop.policy`); their table lives here, below serving, because the
operator view (``aisys.serving.ops_view``) reads it and serving sits below the loop. :class:`ParquetAuditLog`
keeps the rows under ``<lake>/monitoring/retrain_audit/``; :class:`InMemoryAuditLog` is the twin of tests and
of a loop without a lake.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Mapping, Protocol, Sequence

import pandas as pd
import pyarrow as pa

from aisys.config import PathsConfig


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


AUDIT_SCHEMA = pa.schema(
    [
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("retrain", pa.bool_(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("triggers", pa.list_(pa.string())),
        pa.field("reasons", pa.list_(pa.string())),
        pa.field("blocked_by", pa.list_(pa.string())),
        pa.field("inputs", pa.string()),  # JSON: the inputs differ in shape between decisions
    ]
)


class AuditLog(Protocol):
    """Append-only table of retrain decisions."""

    def append(self, record: Mapping[str, Any]) -> None: ...

    def read(self) -> pd.DataFrame: ...


def _audit_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    rows = [{name: record.get(name) for name in AUDIT_SCHEMA.names} for record in records]
    for row in rows:
        row["at"] = _utc(row["at"])
    return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)


class InMemoryAuditLog:
    """The audit log of tests and of a monitor without a lake."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []

    def append(self, record: Mapping[str, Any]) -> None:
        self._records.append(dict(record))

    def read(self) -> pd.DataFrame:
        return _audit_table(self._records).to_pandas()


class ParquetAuditLog:
    """Audit rows as Parquet files under ``<lake>/monitoring/retrain_audit/``.

    Each append writes one small file (named by time, then a random token), so
    concurrent writers never rewrite each other's rows and a crash loses at most
    the row being written.
    """

    def __init__(self, lake_uri: str, paths: "PathsConfig | None" = None):
        from aisys.data.lake import filesystem_for

        self.uri = f"{lake_uri.rstrip('/')}/monitoring/retrain_audit"
        # With paths' S3 endpoint and region: the audit log lives in the lake's store, wherever that is.
        self.fs, root = filesystem_for(lake_uri, paths)
        self.folder = f"{root.rstrip('/')}/monitoring/retrain_audit"

    def append(self, record: Mapping[str, Any]) -> None:
        import pyarrow.parquet as pq

        table = _audit_table([record])
        at = _utc(record["at"]).strftime("%Y%m%dT%H%M%S.%fZ")
        self.fs.create_dir(self.folder, recursive=True)
        pq.write_table(table, f"{self.folder}/part-{at}-{uuid.uuid4().hex[:8]}.parquet", filesystem=self.fs)

    def read(self) -> pd.DataFrame:
        import pyarrow.dataset as ds
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.folder, allow_not_found=True)
        files = sorted(i.path for i in self.fs.get_file_info(selector) if i.base_name.endswith(".parquet"))
        if not files:
            return AUDIT_SCHEMA.empty_table().to_pandas()
        table = ds.dataset(files, schema=AUDIT_SCHEMA, format="parquet", filesystem=self.fs).to_table()
        return table.sort_by("at").to_pandas()
