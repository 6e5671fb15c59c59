"""MovieLens 100k (``u.data`` + ``u.item``) and 1M (``ratings.dat`` + ``movies.dat``).

Every rating is an interaction (implicit feedback, as in the sequential-recommendation literature).
A film has several genres; its tag path is ``("Movies", *genres)`` with its genres most common in the
catalogue first (``tags.label_paths``): "Drama > Romance", "Comedy > Romance". 100k's "unknown" genre
gives no tag. Titles include the year; there is no brand. The item files are Latin-1, as distributed.
"""

from __future__ import annotations

from pathlib import Path

from training.data.dataset import Item
from training.data.files import read_lines, require_dir
from training.data.raw import RawData
from training.data.tags import label_paths
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


def _ratings(path: Path, separator: str, known: set[str]) -> tuple[list[str], list[str], list[int]]:
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
        if fields[1] not in known:
            raise DataError(f"{path}:{line_no}: movie {fields[1]!r} is not in the movie file")
        users.append(fields[0])
        items.append(fields[1])
    return users, items, timestamps


def _items_100k(path: Path) -> list[Item]:
    ids, titles, genres = [], [], []
    for line_no, line in read_lines(path, encoding="latin-1"):
        fields = line.split("|")
        if len(fields) != 5 + len(GENRES_100K):
            raise DataError(f"{path}:{line_no}: expected {5 + len(GENRES_100K)} '|'-separated fields")
        flags = fields[5:]
        ids.append(fields[0])
        titles.append(fields[1])
        genres.append(
            [g for g, flag in zip(GENRES_100K, flags, strict=True) if flag == "1" and g != "unknown"]
        )
    return _movies(ids, titles, genres)


def _items_1m(path: Path) -> list[Item]:
    ids, titles, genres = [], [], []
    for line_no, line in read_lines(path, encoding="latin-1"):
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError(f"{path}:{line_no}: expected MovieID::Title::Genres")
        ids.append(fields[0])
        titles.append(fields[1])
        genres.append(
            [g.strip() for g in fields[2].split("|") if g.strip() and g.strip() != "(no genres listed)"]
        )
    return _movies(ids, titles, genres)


def _movies(ids: list[str], titles: list[str], genres: list[list[str]]) -> list[Item]:
    paths = label_paths(ROOT, genres)
    return [
        Item(item_id=item_id, title=title, category_path=path)
        for item_id, title, path in zip(ids, titles, paths, strict=True)
    ]


def read_movielens(folder: Path) -> RawData:
    require_dir(folder)
    if (folder / "u.data").is_file():
        items = _items_100k(folder / "u.item")
        users, item_ids, timestamps = _ratings(folder / "u.data", "\t", {i.item_id for i in items})
    elif (folder / "ratings.dat").is_file():
        items = _items_1m(folder / "movies.dat")
        users, item_ids, timestamps = _ratings(folder / "ratings.dat", "::", {i.item_id for i in items})
    else:
        raise DataError(f"{folder}: no u.data (MovieLens 100k) or ratings.dat (MovieLens 1M)")
    return RawData(items=items, users=users, item_ids=item_ids, timestamps=timestamps)
