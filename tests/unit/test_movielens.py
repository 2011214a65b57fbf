"""MovieLens readers on tiny fixture files written here, and the wheel download edge mocked."""

from __future__ import annotations

import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from aisys.config import MovieLensConfig
from aisys.data import movielens
from aisys.data.movielens import ensure_movielens, load_movielens, read_grouplens, read_recbole_inter
from aisys.schemas import EVENT_SCHEMA

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t99\t5\t881250949\n"
FLAGS_COMEDY = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)  # first set genre: Comedy
FLAGS_ACTION_DRAMA = "|".join(["0", "1"] + ["0"] * 6 + ["1"] + ["0"] * 10)
U_ITEM = (
    f"242|Kolya (1996)|24-Jan-1997||http://x|{FLAGS_COMEDY}\n"
    f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{FLAGS_ACTION_DRAMA}\n"
    f"377|Heavyweights (1994)|01-Jan-1994||http://x|{'|'.join(['0'] * 19)}\n"
)
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n")


def _grouplens(folder: Path, with_items: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(U_DATA)
    if with_items:
        (folder / "u.item").write_text(U_ITEM, encoding="latin-1")
    return folder


def _recbole(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml-100k.inter").write_text(INTER)
    (folder / "ml-100k.item").write_text(ITEM)
    return folder


def test_grouplens_rows_keep_file_order_and_first_genre(tmp_path):
    table = read_grouplens(_grouplens(tmp_path / "gl"))
    assert table.schema.equals(EVENT_SCHEMA)
    rows = table.to_pylist()
    assert [r["event_id"] for r in rows] == ["ml-0", "ml-1", "ml-2", "ml-3"]
    assert [r["user_id"] for r in rows] == ["196", "186", "22", "196"]
    assert [r["category"] for r in rows] == ["Comedy", "Action", None, None]
    assert rows[0]["value"] == 3.0 and rows[0]["event_type"] == "rating" and rows[0]["price"] is None
    assert rows[0]["timestamp"] == datetime.fromtimestamp(881250949, tz=timezone.utc)


def test_grouplens_without_items_has_null_categories(tmp_path):
    table = read_grouplens(_grouplens(tmp_path / "gl", with_items=False))
    assert table.column("category").null_count == table.num_rows == 4


def test_recbole_format(tmp_path):
    table = read_recbole_inter(_recbole(tmp_path / "rb"))
    assert table.schema.equals(EVENT_SCHEMA)
    assert table.column("item_id").to_pylist() == ["242", "302", "377"]
    assert table.column("category").to_pylist() == ["Comedy", "Crime", None]
    assert table.column("value").to_pylist() == [3.0, 3.0, 1.0]


def test_load_picks_the_format_in_the_folder(tmp_path):
    gl = load_movielens(MovieLensConfig(path=str(_grouplens(tmp_path / "gl"))), tmp_path / "cache")
    rb = load_movielens(MovieLensConfig(path=str(_recbole(tmp_path / "rb"))), tmp_path / "cache")
    assert gl.num_rows == 4 and rb.num_rows == 3
    with pytest.raises(FileNotFoundError, match="neither"):
        load_movielens(MovieLensConfig(path=str(tmp_path)), tmp_path / "cache")


def _fake_wheel(dest: Path) -> None:
    with zipfile.ZipFile(dest / "recbole-9.9.9-py3-none-any.whl", "w") as wheel:
        wheel.writestr("recbole/__init__.py", "")
        wheel.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", INTER)
        wheel.writestr("recbole/dataset_example/ml-100k/ml-100k.item", ITEM)


def test_ensure_movielens_downloads_extracts_and_caches(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        _fake_wheel(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(movielens.subprocess, "run", fake_run)
    folder = ensure_movielens(tmp_path / "cache", recbole_version="9.9.9")
    assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item"]
    assert "recbole==9.9.9" in calls[0] and calls[0][1:4] == ["-m", "pip", "download"]
    assert ensure_movielens(tmp_path / "cache") == folder and len(calls) == 1  # cached: no second download
    table = load_movielens(MovieLensConfig(), tmp_path / "cache")
    assert table.num_rows == 3


def test_ensure_movielens_failure_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "No matching distribution"))
    with pytest.raises(RuntimeError, match="(?s)No matching distribution.*data.movielens.path"):
        ensure_movielens(tmp_path / "cache")
