"""The snapshot cache stays under its size limit, least recently used first."""

import os
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.snapshot import KEEP_RECENT_SECONDS, SnapshotCache, cache_limit

NOW = 1_800_000_000.0
DAY = 86400.0


def _snapshot(root: Path, key: str, size: int, used: float) -> None:
    (root / f"{key}.mig").write_bytes(b"\0" * size)
    meta = root / f"{key}.json"
    meta.write_text("{}")
    os.utime(meta, (used, used))
    (root / f"{key}.mig.lock").write_text("")


def _keys(root: Path) -> set[str]:
    return {p.stem for p in root.glob("*.mig")}


def test_least_recently_used_go_first_until_the_cache_fits(tmp_path):
    cache = SnapshotCache(progress=lambda m: None, root=tmp_path)
    _snapshot(tmp_path, "old", 400, NOW - 3 * DAY)
    _snapshot(tmp_path, "older", 400, NOW - 5 * DAY)
    _snapshot(tmp_path, "new", 400, NOW - DAY)
    evicted = cache.prune(limit=900, now=NOW)
    assert evicted == ["older"], evicted           # 1200 -> 800 bytes: one is enough
    assert _keys(tmp_path) == {"old", "new"}
    assert not (tmp_path / "older.json").exists()
    assert (tmp_path / "older.mig.lock").exists()  # another worker may hold it


def test_recently_used_snapshots_stay_even_over_the_limit(tmp_path):
    cache = SnapshotCache(progress=lambda m: None, root=tmp_path)
    _snapshot(tmp_path, "a", 400, NOW - KEEP_RECENT_SECONDS / 2)
    _snapshot(tmp_path, "b", 400, NOW - 60)
    assert cache.prune(limit=100, now=NOW) == []
    assert _keys(tmp_path) == {"a", "b"}


def test_half_written_saves_are_removed_once_stale(tmp_path):
    cache = SnapshotCache(progress=lambda m: None, root=tmp_path)
    stale, fresh = tmp_path / "k1.tmp123", tmp_path / "k2.tmp456"
    for path, age in ((stale, 2 * KEEP_RECENT_SECONDS), (fresh, 10)):
        path.write_bytes(b"x")
        os.utime(path, (NOW - age, NOW - age))
    cache.prune(limit=1 << 30, now=NOW)
    assert not stale.exists() and fresh.exists()


def test_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("PCI_HARNESS_SNAPSHOT_CACHE_GB", "0.5")
    assert cache_limit() == 1 << 29
    monkeypatch.setenv("PCI_HARNESS_SNAPSHOT_CACHE_GB", "lots")
    with pytest.raises(HarnessError, match="not a number"):
        cache_limit()
    monkeypatch.delenv("PCI_HARNESS_SNAPSHOT_CACHE_GB")
    assert cache_limit() == 8 << 30
