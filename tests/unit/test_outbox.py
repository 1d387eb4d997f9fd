"""/out's limit against a hostile job's tricks, without an engine (the copy side)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bake import outbox
from bake.errors import RunError
from bake.outbox import BLOCK, collect, cost, fs_size

MIB = 1 << 20


def test_the_filesystem_is_a_little_larger_than_the_limit_and_no_more() -> None:
    for limit in (MIB, 8 * MIB, 1 << 30, 50 << 30):
        size = fs_size(limit)
        # Room for ext4's tables (about 3.5 %) and a margin, so a job can pass the limit
        # and be caught by the measure, but never more than that on the host's disk.
        assert limit * 1.05 < size <= limit * 1.07 + 17 * MIB


def test_cost_is_whole_blocks_and_at_least_one() -> None:
    assert cost(0) == BLOCK and cost(1) == BLOCK and cost(BLOCK + 1) == 2 * BLOCK


def test_output_within_the_limit_is_kept(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    (staging / "a.bin").write_bytes(b"a" * MIB)
    (staging / "sub" / "b.txt").write_text("b")
    dest = tmp_path / "dest"
    got = collect(staging, dest, 2 * MIB)
    assert not got.over_limit and got.used == MIB + 2 * BLOCK
    assert (dest / "a.bin").read_bytes() == b"a" * MIB and (dest / "sub" / "b.txt").read_text()
    assert [p.name for p in dest.iterdir() if p.name.startswith(".bake")] == []


def test_output_past_the_limit_keeps_nothing(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "first.bin").write_bytes(b"1" * MIB)
    (staging / "second.bin").write_bytes(b"2" * MIB)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sellers.txt").write_text("mine")
    got = collect(staging, dest, MIB + MIB // 2)
    assert got.over_limit and got.used == 2 * MIB
    assert sorted(p.name for p in dest.iterdir()) == ["sellers.txt"]  # nothing else, untouched


def test_a_sparse_file_counts_at_its_full_size(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    with open(staging / "sparse", "wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB of nothing: a copy would write every byte of it
    dest = tmp_path / "dest"
    got = collect(staging, dest, 8 * MIB)
    assert got.over_limit and got.used == 64 << 30
    assert list(dest.iterdir()) == []


def test_hard_links_count_once_per_name(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "one").write_bytes(b"x" * MIB)
    for i in range(9):
        os.link(staging / "one", staging / f"link{i}")  # 1 MiB on the job's disk, 10 copied
    got = collect(staging, tmp_path / "dest", 8 * MIB)
    assert got.over_limit and got.used == 10 * MIB
    assert list((tmp_path / "dest").iterdir()) == []


def test_many_small_files_count_a_block_each(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(3000):
        (staging / f"f{i}").touch()
    got = collect(staging, tmp_path / "dest", 8 * MIB)
    assert got.over_limit and got.used == 3000 * BLOCK
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_file_that_grows_after_it_was_measured_stops_the_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a.txt").write_text("kept?")
    grows = staging / "grows.bin"
    grows.write_bytes(b"x" * 1024)
    measure = outbox._walk_cost

    def measure_then_grow(folder: Path) -> int:
        used = measure(folder)  # small when measured...
        with open(grows, "ab") as fh:
            fh.write(b"y" * (16 * MIB))  # ...and large when copied
        return used

    monkeypatch.setattr(outbox, "_walk_cost", measure_then_grow)
    dest = tmp_path / "dest"
    got = collect(staging, dest, 8 * MIB)
    assert got.over_limit and got.used > 8 * MIB
    assert list(dest.iterdir()) == []  # not even a.txt, nor the half-copied folder


def test_without_root_output_is_refused_rather_than_unbounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RunError, match="needs root"):
        outbox.open_outbox(MIB, "65534:65534", "owner")
