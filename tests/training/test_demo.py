"""training.demo: the checks it makes before any work, and when it reuses its build."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from training import demo
from training.errors import SidrecError


def _tree(root: Path) -> Path:
    for name, text in {
        "configs/pipeline/demo.toml": "[generator]\n",
        "training/stage.py": "x = 1\n",
        "training/notes.txt": "not an input\n",
        "service/manifest.py": "SCHEMA_VERSION = 3\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_fingerprint_follows_configs_code_and_the_bundle_schema(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = demo.build_fingerprint(root)
    assert demo.build_fingerprint(root) == first
    (root / "training" / "notes.txt").write_text("still not an input\n")
    assert demo.build_fingerprint(root) == first
    for changed in ("configs/pipeline/demo.toml", "training/stage.py", "service/manifest.py"):
        (root / changed).write_text((root / changed).read_text() + "# changed\n")
        assert demo.build_fingerprint(root) != first, changed
        first = demo.build_fingerprint(root)


def test_a_build_is_reused_only_while_current(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert not demo._is_current(out, "abc")
    (out / "bundle").mkdir(parents=True)
    (out / "data").mkdir()
    (out / "bundle" / "manifest.json").write_text("{}")
    (out / demo.BUILD_RECORD).write_text('{"fingerprint": "abc"}')
    assert demo._is_current(out, "abc")
    assert not demo._is_current(out, "def")
    (out / "bundle" / "manifest.json").unlink()
    assert not demo._is_current(out, "abc")


def test_a_busy_port_is_refused_before_any_work(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not demo.port_is_free(port)
        args = argparse.Namespace(out=tmp_path / "demo", port=port, no_serve=True, rebuild=False)
        with pytest.raises(SidrecError, match=f"port {port} is in use"):
            demo.run(args)
    assert not (tmp_path / "demo").exists(), "nothing was built"
    assert demo.port_is_free(port)


def test_the_api_key_is_checked_or_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDREC_API_KEY", "short")
    with pytest.raises(SidrecError, match="at least 16 characters"):
        demo._api_key()
    monkeypatch.setenv("SIDREC_API_KEY", "a-long-enough-key-123")
    assert demo._api_key() == ("a-long-enough-key-123", False)
    monkeypatch.delenv("SIDREC_API_KEY")
    key, generated = demo._api_key()
    assert generated and len(key) >= demo.MIN_KEY_LENGTH and key != demo._api_key()[0]
