"""Reading users' files: formats, column detection and awkward input."""

import json

import pytest

from zoo.data import read_labelled_texts


def test_csv_tsv_and_jsonl_with_detected_columns(tmp_path):
    (tmp_path / "a.csv").write_text('Review,Sentiment\n"good, really",pos\nbad,neg\n')
    (tmp_path / "a.tsv").write_text("text\tlabel\ngood, really\tpos\nbad\tneg\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"sentence": "good, really", "class": "pos"}, {"sentence": "bad", "class": "neg"}]) + "\n")
    for name in ("a.csv", "a.tsv", "a.jsonl"):
        assert read_labelled_texts(tmp_path / name) == (["good, really", "bad"], ["pos", "neg"])


def test_named_columns(tmp_path):
    (tmp_path / "a.csv").write_text("body_text,y\nhello,1\n")
    assert read_labelled_texts(tmp_path / "a.csv", "body_text", "y") == (["hello"], ["1"])
    with pytest.raises(ValueError, match="no label column named 'z'.*Columns found"):
        read_labelled_texts(tmp_path / "a.csv", "body_text", "z")


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv is empty"):
        read_labelled_texts(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match="header but no rows"):
        read_labelled_texts(tmp_path / "header.csv")


def test_missing_columns_are_named(tmp_path):
    (tmp_path / "a.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match=r"could not find a text column among \['bar', 'foo'\]"):
        read_labelled_texts(tmp_path / "a.csv")


def test_non_utf8_bytes_are_replaced_with_a_warning(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"text,label\ncaf\xe9 cr\xe8me,pos\nfine,neg\n")
    with pytest.warns(UserWarning, match=r"1 line\(s\) are not valid UTF-8 \(lines 2\)"):
        texts, labels = read_labelled_texts(tmp_path / "a.csv")
    assert texts == ["caf\ufffd cr\ufffdme", "fine"] and labels == ["pos", "neg"]


def test_empty_texts_and_missing_labels_are_skipped(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\n,pos\n   ,neg\nok,\nkept,pos\n")
    with pytest.warns(UserWarning, match="empty text|without a label"):
        assert read_labelled_texts(tmp_path / "a.csv") == (["kept"], ["pos"])


def test_unknown_format_and_bad_json(tmp_path):
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown format '.xlsx'"):
        read_labelled_texts(tmp_path / "a.xlsx")
    (tmp_path / "a.jsonl").write_text('{"text": "a", "label": "b"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not a JSON object"):
        read_labelled_texts(tmp_path / "a.jsonl")
