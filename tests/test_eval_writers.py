"""Answer-file writers: VQAv2 (EvalAI), MM-Vet, MMBench (.xlsx read back both by hand and, when installed, by
openpyxl; .tsv), the plain predictions file, and the small .xlsx writer."""

import csv
import json
import zipfile
from xml.etree import ElementTree

import pytest

from vl_mamba.eval.records import EvalSample
from vl_mamba.eval.writers import (
    mmbench_submission_table,
    write_mmbench_submission,
    write_mmvet_answers,
    write_predictions_jsonl,
    write_vqav2_submission,
)
from vl_mamba.eval.xlsx import _column_name, write_xlsx

NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


def read_xlsx_by_hand(path):
    """Rows of the first sheet as {column letter: value}, from the XML."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {"[Content_Types].xml", "_rels/.rels", "xl/workbook.xml", "xl/_rels/workbook.xml.rels"} <= names
        sheet = ElementTree.fromstring(zf.read("xl/worksheets/sheet1.xml"))
    rows = []
    for row in sheet.iterfind(".//m:row", NS):
        cells = {}
        for cell in row.iterfind("m:c", NS):
            column = "".join(ch for ch in cell.get("r") if ch.isalpha())
            if cell.get("t") == "inlineStr":
                cells[column] = cell.find("m:is/m:t", NS).text or ""
            else:
                cells[column] = int(cell.find("m:v", NS).text)
        rows.append(cells)
    return rows


def test_vqav2_submission(tmp_path):
    path = write_vqav2_submission(tmp_path / "a" / "answers.json", [3, 1], ["Two dogs.", "YES"])
    assert json.loads(path.read_text()) == [{"question_id": 3, "answer": "2 dogs"}, {"question_id": 1, "answer": "yes"}]
    path = write_vqav2_submission(tmp_path / "b.json", [3], ["Two"], all_question_ids=[1, 2, 3], normalize=False)
    assert json.loads(path.read_text()) == [
        {"question_id": 1, "answer": ""},
        {"question_id": 2, "answer": ""},
        {"question_id": 3, "answer": "Two"},
    ]
    with pytest.raises(ValueError, match="not in all_question_ids"):
        write_vqav2_submission(tmp_path / "c.json", [9], ["x"], all_question_ids=[1, 2])
    with pytest.raises(ValueError, match="repeat"):
        write_vqav2_submission(tmp_path / "c.json", [1, 1], ["x", "y"])


def test_mmvet_answers(tmp_path):
    path = write_mmvet_answers(tmp_path / "mmvet.json", ["v1_0", "v1_1"], ["  four\n", "a cat"])
    assert json.loads(path.read_text()) == {"v1_0": "four", "v1_1": "a cat"}


def _mmbench_samples():
    return [
        EvalSample(0, "p", question="What color?", answers=["B"], metadata={"options": ["red", "green", "blue"]}),
        EvalSample(
            1_000_000, "p", question="What color?", answers=["A"], metadata={"options": ["green", "blue", "red"]}
        ),
        EvalSample(5, "p", question='Is it <big> & "round"?', answers=["A"], metadata={"options": ["yes", "no"]}),
    ]


def test_mmbench_table():
    header, rows = mmbench_submission_table(_mmbench_samples(), ["B", "The answer is A", "no"])
    assert header == ["index", "question", "A", "B", "C", "D", "prediction", "answer"]
    assert rows[1] == [1_000_000, "What color?", "green", "blue", "red", None, "The answer is A", "A"]
    assert rows[2][:6] == [5, 'Is it <big> & "round"?', "yes", "no", None, None]
    header, _ = mmbench_submission_table([EvalSample(0, "p", question="q", metadata={"options": ["a", "b"]})], ["a"])
    assert "answer" not in header  # test split: no answers


def test_mmbench_xlsx(tmp_path):
    path = write_mmbench_submission(tmp_path / "sub.xlsx", _mmbench_samples(), ["B", "A", "no"])
    rows = read_xlsx_by_hand(path)
    assert rows[0] == {
        "A": "index",
        "B": "question",
        "C": "A",
        "D": "B",
        "E": "C",
        "F": "D",
        "G": "prediction",
        "H": "answer",
    }
    assert rows[1] == {"A": 0, "B": "What color?", "C": "red", "D": "green", "E": "blue", "G": "B", "H": "B"}
    assert rows[3]["B"] == 'Is it <big> & "round"?'


def test_mmbench_xlsx_opens_in_openpyxl(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    path = write_mmbench_submission(tmp_path / "sub.xlsx", _mmbench_samples(), ["B", "A", "no"])
    sheet = openpyxl.load_workbook(path).active
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    assert values[2] == [1_000_000, "What color?", "green", "blue", "red", None, "A", "A"]


def test_mmbench_tsv(tmp_path):
    path = write_mmbench_submission(tmp_path / "sub.tsv", _mmbench_samples(), ["B", "A", "no"])
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows[2]["question"] == 'Is it <big> & "round"?' and rows[2]["C"] == "" and rows[2]["prediction"] == "no"
    with pytest.raises(ValueError, match="xlsx or .tsv"):
        write_mmbench_submission(tmp_path / "sub.csv", _mmbench_samples(), ["B", "A", "no"])


def test_predictions_jsonl(tmp_path):
    samples = [EvalSample("q1", "What?\nAnswer briefly.", answers=["x"], category="c"), EvalSample(2, "Why?")]
    path = write_predictions_jsonl(tmp_path / "p.jsonl", samples, ["x", "because"])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "question_id": "q1",
        "prompt": "What?\nAnswer briefly.",
        "prediction": "x",
        "answers": ["x"],
        "category": "c",
    }
    assert lines[1]["question_id"] == 2 and lines[1]["answers"] == []


def test_xlsx_columns_and_control_characters(tmp_path):
    assert [_column_name(i) for i in (0, 25, 26, 27, 701, 702)] == ["A", "Z", "AA", "AB", "ZZ", "AAA"]
    header = [f"c{i}" for i in range(28)]
    path = write_xlsx(tmp_path / "wide.xlsx", header, [["bell\x07", *range(27)]])
    rows = read_xlsx_by_hand(path)
    assert rows[0]["AB"] == "c27" and rows[1]["AB"] == 26 and rows[1]["A"] == "bell"
