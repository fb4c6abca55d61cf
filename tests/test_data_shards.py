"""Shard specs (brace patterns, globs, directories, lists, ``::``, URLs, ``pipe:``), weighted sources, sample
counts from ``sizes.json``, atomic shard writing, and tar reading (grouping by key, ``pipe:`` shards)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from data_modules.shard_writer import check_key, write_shard, write_sizes
from data_modules.shards import count_samples, expand_shards, parse_sources
from data_modules.skips import SkipCounter
from data_modules.tar_reader import read_tar_samples, split_name


def make_shards(directory: Path, count: int, per_shard: int = 2) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for shard in range(count):
        samples = [(f"s{shard}k{i}", {"txt": f"caption {shard} {i}".encode(), "cls": b"1"}) for i in range(per_shard)]
        sizes[f"{shard:05d}.tar"] = write_shard(directory / f"{shard:05d}.tar", samples)
    write_sizes(directory, sizes)
    return [str(directory / name) for name in sorted(sizes)]


def test_spec_forms_expand_to_the_same_shards(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "a", 4)
    assert expand_shards(str(tmp_path / "a" / "{00000..00003}.tar")) == shards
    assert expand_shards(str(tmp_path / "a" / "*.tar")) == shards
    assert expand_shards(str(tmp_path / "a")) == shards
    assert expand_shards(shards) == shards
    assert expand_shards(f"{shards[0]}::{tmp_path / 'a' / '0000[1-3].tar'}") == shards
    remote = expand_shards(["https://host/d/{0..2}.tar", "pipe:cat /x/y.tar"])
    assert remote == ["https://host/d/0.tar", "https://host/d/1.tar", "https://host/d/2.tar", "pipe:cat /x/y.tar"]


def test_missing_local_shards_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError):
        expand_shards(str(tmp_path / "{0..1}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        expand_shards(str(tmp_path / "empty"))


def test_weighted_sources(tmp_path: Path) -> None:
    make_shards(tmp_path / "a", 2)
    make_shards(tmp_path / "b", 3)
    sources = parse_sources({str(tmp_path / "a"): 3, str(tmp_path / "b" / "*.tar"): 1.0})
    assert [len(s.urls) for s in sources] == [2, 3]
    assert [s.weight for s in sources] == [3.0, 1.0]
    assert len(parse_sources(str(tmp_path / "a"))) == 1
    with pytest.raises(ValueError, match="positive"):
        parse_sources({str(tmp_path / "a"): 0})


def test_count_samples_reads_sizes_json(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "a", 3, per_shard=5) + make_shards(tmp_path / "b", 2, per_shard=4)
    assert count_samples(shards) == 3 * 5 + 2 * 4
    (tmp_path / "b" / "sizes.json").unlink()
    assert count_samples(shards) is None
    assert count_samples([f"pipe:cat {shards[0]}"]) is None


def test_write_shard_is_atomic_and_keys_have_no_dots(tmp_path: Path) -> None:
    path = tmp_path / "00000.tar"
    with pytest.raises(ValueError, match="dots"):
        write_shard(path, [("a.b", {"txt": b"x"})])
    assert list(tmp_path.iterdir()) == []  # neither the shard nor its temporary file
    assert write_shard(path, [("k1", {"txt": b"x", "json": b"{}"}), ("k2", {"txt": b"y"})]) == 2
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["k1.txt", "k1.json", "k2.txt"]
    assert check_key("000123") == "000123"


def test_split_name_cuts_at_the_first_dot() -> None:
    assert split_name("dir/000123.seg.JSON") == ("dir/000123", "seg.json")
    assert split_name("README") == (None, None)


def test_tar_reader_groups_files_by_key_and_reads_pipes(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 2, per_shard=3)
    counter = SkipCounter()
    samples = list(read_tar_samples([shards[0], f"pipe:cat {shards[1]}"], counter))
    assert [s["__key__"] for s in samples] == ["s0k0", "s0k1", "s0k2", "s1k0", "s1k1", "s1k2"]
    assert samples[4]["txt"] == b"caption 1 1" and samples[4]["cls"] == b"1"
    assert samples[4]["__url__"] == f"pipe:cat {shards[1]}"
    assert counter.totals == {}


def test_unreadable_shards_are_counted_and_an_endless_stream_of_them_stops(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, 1)
    counter = SkipCounter()
    urls = [str(tmp_path / "gone.tar"), shards[0], f"pipe:cat {tmp_path / 'gone.tar'}"]
    assert len(list(read_tar_samples(urls, counter))) == 2
    assert counter.totals == {"unreadable_shard": 2}
    with pytest.raises(RuntimeError, match="in a row"):
        list(read_tar_samples((str(tmp_path / "gone.tar") for _ in range(1000)), SkipCounter(), max_empty_shards=5))
