import json

import numpy as np

from training.__main__ import main
from training.data.dataset import Dataset


def test_prepare_synthetic_writes_the_canonical_dataset(tmp_path, capsys):
    out = tmp_path / "data"
    code = main(
        [
            "prepare",
            "--source",
            "synthetic:n_items=300,n_users=200,seed=3",
            "--out",
            str(out),
            "--min-tag-count",
            "5",
            "--tag-levels",
            "2",
        ]
    )
    assert code == 0
    for name in ("items.jsonl", "sequences.jsonl", "tags.json", "stats.json", "metrics.json", "config.toml"):
        assert (out / name).is_file(), name
    stats = json.loads((out / "stats.json").read_text())
    for key in ("users", "items", "interactions", "avg_seq_len", "tag_classes_per_level", "tail_fraction"):
        assert key in stats
    assert (
        stats["users"] + stats["dropped"]["users_short"] == 200 and len(stats["tag_classes_per_level"]) == 2
    )
    assert stats["dropped"]["interactions_repeated"] > 0  # the synthetic shop repeats some items
    assert stats["command"].startswith("python -m training")
    assert 'source = "synthetic:n_items=300,n_users=200,seed=3"' in (out / "config.toml").read_text()
    dataset = Dataset.load(out)
    assert dataset.n_users == stats["users"] and dataset.n_interactions == stats["interactions"]
    assert not any((np.diff(s) == 0).any() for s in dataset.sequences)
    printed = capsys.readouterr().out
    assert "dropped: interactions_repeated" in printed
    assert "interactions" in printed and f"{stats['interactions']:,}" in printed


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["prepare", "--source", f"csv:{tmp_path}", "--out", str(tmp_path / "o")]) == 2
    assert "unknown source format 'csv'" in capsys.readouterr().err
    assert main(["prepare", "--source", f"sidrec:{tmp_path}", "--out", str(tmp_path / "o")]) == 2
    assert "items.jsonl does not exist" in capsys.readouterr().err
    assert main(["prepare", "--source", "synthetic:n_itemz=5", "--out", str(tmp_path / "o")]) == 2
    assert "n_itemz" in capsys.readouterr().err


def test_prepare_kcore_and_short_users_are_reported(tmp_path, sidrec_folder, capsys):
    items = [{"item_id": name, "title": name} for name in "abcd"]
    rows = [
        (u, i, t)
        for t, (u, i) in enumerate(
            [
                ("u1", "a"),
                ("u1", "b"),
                ("u1", "c"),
                ("u2", "a"),
                ("u2", "b"),
                ("u2", "c"),
                ("u3", "a"),
                ("u3", "b"),
                ("u3", "d"),
            ]  # d is seen once: 2-core drops it, then u3 is short
        )
    ]
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "--source",
                f"sidrec:{sidrec_folder(items, rows)}",
                "--out",
                str(out),
                "--kcore",
                "2",
                "--min-tag-count",
                "1",
            ]
        )
        == 0
    )
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 3, 6)
    assert stats["dropped"] == {
        "interactions_repeated": 0,
        "interactions_kcore": 1,
        "users_short": 1,
        "items_without_interactions": 1,
    }
    assert "dropped: users_short" in capsys.readouterr().out
