"""The demo's calls that need the API key (training.demo.operator_tour), against the real app on the
tiny bundle: events -> a recommendation by user_id, and a cold-start item built like the demo's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from tests.service.conftest import API_KEY
from tests.training.export.tiny_run import TinyRun
from training.demo import cold_start_body, operator_tour, print_operator_tour


def test_operator_tour(client: TestClient, tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    dataset = tiny_run.dataset
    cache = tmp_path / "data" / "cache"
    cache.mkdir(parents=True)
    np.save(cache / "item-texts.npy", tiny_run.embeddings.astype(np.float32))
    rows = [int(i) for i in dataset.sequences[0][-5:]]
    history = [dataset.items[i].item_id for i in rows]
    body = cold_start_body(tmp_path, dataset, rows[-2:], tiny_run.embeddings.shape[1])
    assert np.allclose(body["embedding"], tiny_run.embeddings[rows[-2:]].mean(axis=0), atol=1e-5)
    answers = operator_tour(client, API_KEY, history, body)
    assert answers["events"]["history_length"] == len(history)
    explicit = client.post("/recommend", json={"history": history, "k": 5}).json()
    assert answers["by_user"]["items"] == explicit["items"]
    cold = answers["cold_start"]
    assert cold["cold_start"] and cold["item_id"] == "demo-new-1" and cold["title"] == body["title"]
    again = operator_tour(client, API_KEY, history, body)  # a second run finds the item registered
    assert again["cold_start"]["codes"] == cold["codes"]
    print_operator_tour(answers)
    assert "PUT /items/demo-new-1 (cold start)" in capsys.readouterr().out
