"""``convert-llava`` and ``stats``: shards, ``sizes.json`` and the report of missing, corrupt and invalid
records; parallel output equal to serial output; resumption after an interruption and after a SIGKILL with
exactly the expected samples, none twice; and the ``vl-mamba data`` command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_modules import InstructDataModule
from data_modules import llava_convert as convert_module
from data_modules.commands import main
from data_modules.llava_convert import REPORT_FILE, convert_llava, sample_key
from data_modules.stats import collect_stats

SIZES = [(40, 30), (64, 48), (33, 57)]


def conversation(question: str, answer: str, image: bool = True) -> list[dict[str, str]]:
    prefix = "<image>\n" if image else ""
    return [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def llava(tmp_path: Path) -> tuple[Path, Path, list[dict], set[int]]:
    """A small LLaVA-style JSON with its image folder; returns (json, images, records, valid indices)."""
    images = tmp_path / "images"
    (images / "coco" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(SIZES):
        array = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(array).save(images / "coco" / f"{index}.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / "coco" / "sub" / "p.png")
    (images / "coco" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300)
    records: list[dict] = [
        {"id": "000001", "image": "coco/0.jpg", "conversations": conversation("What is it?", "A pattern.")},
        {"id": "GCC.train.2", "image": "coco/1.jpg", "conversations": conversation("Describe.", "Noise.")},
        {"id": "sharegpt-1", "conversations": conversation("Say hi.", "Hi!", image=False)},
        {"id": "lost", "image": "coco/missing.jpg", "conversations": conversation("Q?", "A.")},
        {"id": "broken", "image": "coco/bad.jpg", "conversations": conversation("Q?", "A.")},
        {"id": "empty", "image": "coco/0.jpg", "conversations": []},
    ]
    for i in range(6):
        records.append({"id": f"x{i}", "image": f"coco/{i % 3}.jpg", "conversations": conversation(f"Q{i}?", f"A{i}.")})
    records[9] = {"id": "lost2", "image": "coco/nope.png", "conversations": conversation("Q?", "A.")}
    records.append({"id": "nested", "image": "coco/sub/p.png", "conversations": conversation("Colour?", "Many.")})
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    valid = {0, 1, 2, 6, 7, 8, 10, 11, 12}
    return path, images, records, valid


def shard_contents(directory: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} over every shard; fails on a key seen twice."""
    contents: dict[str, dict[str, bytes]] = {}
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            shard_samples: dict[str, dict[str, bytes]] = {}
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                shard_samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
        assert not contents.keys() & shard_samples.keys(), "a sample was written twice"
        contents.update(shard_samples)
    return contents


def test_convert_writes_shards_sizes_and_report(tmp_path: Path, llava, tokenizer_path: Path) -> None:
    json_path, images, records, valid = llava
    out = tmp_path / "out"
    report = convert_llava(json_path, images, out, shard_size=3)
    contents = shard_contents(out)
    assert set(contents) == {sample_key(i) for i in valid}
    assert all("." not in key for key in contents)
    assert json.loads(contents[sample_key(1)]["json"]) == records[1]  # the dotted id stays in the record
    assert contents[sample_key(0)]["jpg"] == (images / "coco" / "0.jpg").read_bytes()
    assert contents[sample_key(12)]["png"] == (images / "coco" / "sub" / "p.png").read_bytes()
    assert set(contents[sample_key(2)]) == {"json"}  # text-only
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"00000.tar": 3, "00002.tar": 3, "00003.tar": 2, "00004.tar": 1}  # shard 1 had no good record
    assert report.samples == len(valid) and report.records == len(records) and report.resumed_shards == 0
    assert sorted(report.missing) == [str(images / "coco" / "missing.jpg"), str(images / "coco" / "nope.png")]
    assert len(report.corrupt) == 1 and "bad.jpg" in report.corrupt[0]
    assert report.invalid == [f"{sample_key(5)}: no conversations"]
    assert json.loads((out / REPORT_FILE).read_text())["samples"] == len(valid)
    assert not list(out.rglob("*.tmp"))

    data = InstructDataModule(val_shards=str(out), tokenizer=str(tokenizer_path), batch_size=4, num_workers=0)
    data.setup("validate")
    batches = list(data.val_dataloader())
    assert sorted(key for b in batches for key in b["keys"]) == sorted(contents)
    assert sum(int(b["has_image"].sum()) for b in batches) == len(valid) - 1
    assert all(b["skipped"] == {} for b in batches)


def test_parallel_conversion_writes_what_serial_conversion_writes(tmp_path: Path, llava) -> None:
    json_path, images, _, _ = llava
    convert_llava(json_path, images, tmp_path / "serial", shard_size=2, workers=1)
    convert_llava(json_path, images, tmp_path / "parallel", shard_size=2, workers=2)
    assert shard_contents(tmp_path / "serial") == shard_contents(tmp_path / "parallel")
    assert (tmp_path / "serial" / "sizes.json").read_text() == (tmp_path / "parallel" / "sizes.json").read_text()


def test_resume_after_an_interruption(tmp_path: Path, llava, monkeypatch) -> None:
    json_path, images, _, valid = llava
    out = tmp_path / "out"
    calls = {"n": 0}
    read_image = convert_module.read_image

    def interrupted(path: Path) -> tuple[str, bytes]:
        calls["n"] += 1
        if calls["n"] == 8:  # in the middle of the fourth shard
            raise KeyboardInterrupt
        return read_image(path)

    monkeypatch.setattr(convert_module, "read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_llava(json_path, images, out, shard_size=3)
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00002.tar"]  # complete shards only
    assert not (out / "sizes.json").exists()

    monkeypatch.setattr(convert_module, "read_image", read_image)
    report = convert_llava(json_path, images, out, shard_size=3)
    assert report.resumed_shards == 3  # shards 0, 1 (empty) and 2
    assert set(shard_contents(out)) == {sample_key(i) for i in valid}
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == len(valid)
    assert len(report.missing) == 2 and len(report.corrupt) == 1  # reports of resumed shards are kept


def test_resume_after_sigkill(tmp_path: Path, llava, repo_root: Path) -> None:
    json_path, images, _, valid = llava
    out = tmp_path / "out"
    script = (
        "import time, sys\n"
        "import data_modules.llava_convert as m\n"
        "read = m.read_image\n"
        "def slow(path):\n"
        "    time.sleep(0.3)\n"
        "    return read(path)\n"
        "m.read_image = slow\n"
        "from data_modules.commands import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["convert-llava", "--json", str(json_path), "--images", str(images), "--out", str(out)]
    args += ["--shard-size", "2", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.tar")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes
        process.wait()
    finished = {p.name for p in out.glob("*.tar")}
    marked_done = [p for p in (out / "convert_state").glob("0*.json")]  # a shard is done once its report exists
    assert finished and len(marked_done) < 7, "the kill should land mid-conversion"
    assert not (out / "sizes.json").exists()

    report = convert_llava(json_path, images, out, shard_size=2, workers=2)
    assert report.resumed_shards == len(marked_done)
    assert set(shard_contents(out)) == {sample_key(i) for i in valid}
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == len(valid)
    assert not list(out.rglob("*.tmp"))


def test_resume_refuses_other_settings(tmp_path: Path, llava) -> None:
    json_path, images, _, _ = llava
    convert_llava(json_path, images, tmp_path / "out", shard_size=3)
    with pytest.raises(ValueError, match="shard size"):
        convert_llava(json_path, images, tmp_path / "out", shard_size=4)


def test_stats_describe_a_shard_set(tmp_path: Path, llava, text_tokenizer) -> None:
    json_path, images, records, valid = llava
    convert_llava(json_path, images, tmp_path / "out", shard_size=3)
    stats = collect_stats(str(tmp_path / "out"), tokenizer=text_tokenizer)
    assert stats["shards"] == 4 and stats["samples"] == stats["samples_in_sizes_json"] == len(valid)
    assert stats["with_image"] == len(valid) - 1 and stats["text_only"] == 1
    texts = ["\n".join(turn["value"] for turn in records[i]["conversations"]) for i in valid]
    assert stats["text_tokens"]["total"] == sum(len(text_tokenizer.encode(t)) for t in texts)
    widths = [SIZES[i % 3][0] for i in (0, 1, 6, 7, 8, 10, 11)] + [20]
    assert stats["image_width"]["min"] == min(widths) and stats["image_width"]["max"] == max(widths)
    assert stats["image_formats"] == {"JPEG": 7, "PNG": 1}
    assert stats["unreadable"] == {}


def test_data_command_line(tmp_path: Path, llava, tokenizer_path: Path, capsys, monkeypatch) -> None:
    json_path, images, _, valid = llava
    out = tmp_path / "out"
    args = ["convert-llava", "--json", str(json_path), "--images", str(images), "--out", str(out)]
    assert main([*args, "--shard-size", "3", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "missing:" in printed and "corrupt:" in printed and "invalid:" in printed
    assert main(["stats", str(out), "--tokenizer", str(tokenizer_path), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["samples"] == len(valid)
    assert "text tokens" in capsys.readouterr().out

    received = []
    fake = types.ModuleType("data_modules.synthetic")
    fake.main = lambda argv: received.append(argv) or 0
    monkeypatch.setitem(sys.modules, "data_modules.synthetic", fake)
    assert main(["synthetic", "--out", "x", "--size", "3"]) == 0
    assert received == [["--out", "x", "--size", "3"]]
    with pytest.raises(SystemExit):
        main(["no-such-command"])
