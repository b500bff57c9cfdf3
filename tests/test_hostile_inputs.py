"""Hostile and broken inputs: nothing is dropped silently, nothing costs
without bound, and the command line answers with one `error:` line."""

import json

import pytest

from zoo import data
from zoo.__main__ import main
from zoo.data import read_labelled_data, read_sentence_data


def rows(count, broken_at=None, broken="\"Truly the worst\tneg"):
    lines = ["text\tlabel"]
    for index in range(count):
        lines.append(broken if index == broken_at else f"review {index}\t{'pos' if index % 2 else 'neg'}")
    return "\n".join(lines) + "\n"


def train_cli(path, tmp_path, capsys, *flags):
    code = main(["train", "text-classifier", "--data", str(path), "--out",
                 str(tmp_path / "run"), "--from-scratch", *flags])
    return code, capsys.readouterr()


def test_an_unclosed_quote_in_a_tsv_is_text_and_every_row_is_read(tmp_path):
    (tmp_path / "reviews.tsv").write_text(rows(1000, broken_at=9))
    texts, labels, counts = read_labelled_data(tmp_path / "reviews.tsv")
    assert len(texts) == 1000 and counts.rows == counts.used == 1000 and not counts.skipped
    assert texts[9] == "\"Truly the worst" and labels[9] == "neg"
    assert texts[999] == "review 999"


def test_an_unclosed_quote_in_a_csv_is_refused_at_the_line_it_opens(tmp_path, capsys):
    lines = ["text,label"] + [f"review {i},pos" for i in range(1000)]
    lines[10] = "\"Truly the worst,neg"  # the tenth row, line 11 of the file
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"reviews.csv, line 11: a quoted field opens in the "
                                         r"record starting here and never closes"):
        read_labelled_data(tmp_path / "reviews.csv")
    code, output = train_cli(tmp_path / "reviews.csv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert output.err.startswith("error: ") and "line 11" in output.err
    # A quoted field over several lines is CSV, and is read.
    (tmp_path / "multi.csv").write_text("text,label\n\"two\nlines\",pos\nplain,neg\n")
    texts, _, counts = read_labelled_data(tmp_path / "multi.csv")
    assert texts == ["two\nlines", "plain"] and counts.rows == 2


def test_a_long_field_is_cut_and_counted_and_an_oversized_one_refused(tmp_path, capsys):
    long_text = "word " * 40_000  # 200,000 characters, over the csv module's 128 KB
    (tmp_path / "long.csv").write_text(f"text,label\n{long_text},pos\nshort,neg\n")
    texts, _, counts = read_labelled_data(tmp_path / "long.csv")
    assert len(texts[0]) == data.MAX_TEXT_CHARACTERS and texts[1] == "short"
    assert counts.cut == 1 and "1 text(s) cut to 100000 characters" in counts.summary()
    # One line longer than any field may be: refused by line, not a traceback.
    (tmp_path / "huge.csv").write_text("text,label\nfine,pos\n" + "x" * (data.MAX_FIELD_CHARACTERS + 1)
                                       + ",neg\n")
    code, output = train_cli(tmp_path / "huge.csv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert f"huge.csv, line 3: a field of more than {data.MAX_FIELD_CHARACTERS}" in output.err


def test_a_binary_file_is_refused_with_one_error_line(tmp_path, capsys):
    (tmp_path / "weights.csv").write_bytes(b"text,label\nfine,pos\n\x89PNG\x00\x00\x01\xff" * 3)
    code, output = train_cli(tmp_path / "weights.csv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert "weights.csv, line 3: a NUL byte; expected a UTF-8 text file" in output.err
    (tmp_path / "pairs.tsv").write_bytes(b"a\tb\n" * 20 + b"\x00")
    with pytest.raises(ValueError, match="pairs.tsv, line 21: a NUL byte"):
        read_sentence_data(tmp_path / "pairs.tsv")


def test_a_huge_json_record_is_cut_at_read_time(tmp_path):
    records = [{"text": "z" * (20 << 20), "label": "pos"}, {"text": "fine", "label": "neg"}]
    (tmp_path / "big.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    texts, labels, counts = read_labelled_data(tmp_path / "big.jsonl")
    assert [len(t) for t in texts] == [data.MAX_TEXT_CHARACTERS, 4] and counts.cut == 1
    pairs = [{"source": "q" * 200_000, "target": "kurz"}] + [
        {"source": f"s{i}", "target": f"t{i}"} for i in range(10)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    sources, targets, counts = read_sentence_data(tmp_path / "pairs.jsonl")
    assert len(sources[0]) == data.MAX_TEXT_CHARACTERS and counts.cut == 1 and counts.rows == 11


def test_skipped_rows_past_the_share_stop_the_run_unless_allowed(tmp_path, capsys):
    text = rows(100).replace("review 5\tpos", "review 5\t").replace("review 7\tpos", "\tpos")
    (tmp_path / "gaps.tsv").write_text(text)
    code, output = train_cli(tmp_path / "gaps.tsv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert ("2 of 100 rows skipped (1 without a label, 1 with empty text), more than the 1% "
            "allowed") in output.err and "--allow-skipped" in output.err
    texts, _, counts = read_labelled_data(tmp_path / "gaps.tsv", allow_skipped=True)
    assert len(texts) == 98 and counts.skipped == {"without a label": 1, "with empty text": 1}


def test_sentences_keep_unicode_line_separators(tmp_path):
    lines = [f"line\u2028{i}\tZeile\x85{i}" for i in range(12)]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources, targets, _ = read_sentence_data(tmp_path / "pairs.tsv")
    assert sources[3] == "line\u20283" and targets[3] == "Zeile\x853" and len(sources) == 12
