"""MovieLens 100k (``u.data`` + ``u.item``) and 1M (``ratings.dat`` + ``movies.dat``).

Every rating is an interaction (implicit feedback, as in the sequential-recommendation literature).
The first listed genre becomes a one-level tag path ``("Movies", genre)``; 100k's "unknown" genre gives
no tag. Titles include the year; there is no brand. The item files are Latin-1, as distributed.
"""

from __future__ import annotations

from pathlib import Path

from training.data.dataset import Item
from training.data.files import read_lines, require_dir
from training.data.raw import RawData
from training.errors import DataError

__all__ = ["read_movielens"]

ROOT = "Movies"
#: the 19 genre flags of u.item, in column order (u.genre of the 100k release)
GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def _ratings(path: Path, separator: str) -> tuple[list[str], list[str], list[int]]:
    users: list[str] = []
    items: list[str] = []
    timestamps: list[int] = []
    for line_no, line in read_lines(path, encoding="latin-1"):
        fields = line.split(separator)
        if len(fields) != 4:
            raise DataError(f"{path}:{line_no}: expected user{separator}item{separator}rating{separator}time")
        try:
            timestamps.append(int(fields[3]))
        except ValueError:
            raise DataError(f"{path}:{line_no}: timestamp {fields[3]!r} is not an integer") from None
        users.append(fields[0])
        items.append(fields[1])
    return users, items, timestamps


def _movie(item_id: str, title: str, genre: str | None) -> Item:
    return Item(item_id=item_id, title=title, category_path=(ROOT, genre) if genre else (ROOT,))


def _items_100k(path: Path) -> list[Item]:
    items = []
    for line_no, line in read_lines(path, encoding="latin-1"):
        fields = line.split("|")
        if len(fields) != 5 + len(GENRES_100K):
            raise DataError(f"{path}:{line_no}: expected {5 + len(GENRES_100K)} '|'-separated fields")
        flags = fields[5:]
        genres = [name for name, flag in zip(GENRES_100K, flags, strict=True) if flag == "1"]
        genre = next((g for g in genres if g != "unknown"), None)
        items.append(
            Item(item_id=fields[0], title=fields[1], category_path=(ROOT, genre) if genre else (ROOT,))
        )
    return items


def _items_1m(path: Path) -> list[Item]:
    items = []
    for line_no, line in read_lines(path, encoding="latin-1"):
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError(f"{path}:{line_no}: expected MovieID::Title::Genres")
        genre = fields[2].split("|")[0].strip()
        items.append(
            Item(item_id=fields[0], title=fields[1], category_path=(ROOT, genre) if genre else (ROOT,))
        )
    return items


def read_movielens(folder: Path) -> RawData:
    require_dir(folder)
    if (folder / "u.data").is_file():
        users, item_ids, timestamps = _ratings(folder / "u.data", "\t")
        items = _items_100k(folder / "u.item")
    elif (folder / "ratings.dat").is_file():
        users, item_ids, timestamps = _ratings(folder / "ratings.dat", "::")
        items = _items_1m(folder / "movies.dat")
    else:
        raise DataError(f"{folder}: no u.data (MovieLens 100k) or ratings.dat (MovieLens 1M)")
    return RawData(items=items, users=users, item_ids=item_ids, timestamps=timestamps)
