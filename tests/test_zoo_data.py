"""Reading users' files: formats, column detection and awkward input."""

import json
import re

import pytest

from zoo.data import read_labelled_data, read_labelled_texts, read_sentence_pairs
from zoo.datasets import load_message_pairs, message_languages, split_pairs


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


def test_empty_texts_and_missing_labels_are_counted_and_refused_past_one_percent(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\n,pos\n   ,neg\nok,\nkept,pos\n")
    with pytest.raises(ValueError, match=r"a.csv: 3 of 4 rows skipped \(2 with empty text, 1 "
                                         r"without a label\), more than the 1% allowed.*"
                                         r"--allow-skipped"):
        read_labelled_texts(tmp_path / "a.csv")
    texts, labels, counts = read_labelled_data(tmp_path / "a.csv", allow_skipped=True)
    assert (texts, labels) == (["kept"], ["pos"])
    assert counts.summary() == (f"{tmp_path / 'a.csv'}: 4 rows read, 1 used; skipped 2 with "
                                "empty text, 1 without a label")
    # One row in a hundred is within the share.
    rows = "".join(f"text {i},pos\n" for i in range(99)) + "no label,\n"
    (tmp_path / "b.csv").write_text("text,label\n" + rows)
    assert len(read_labelled_texts(tmp_path / "b.csv")[0]) == 99


def test_unknown_format_and_bad_json(tmp_path):
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown format '.xlsx'"):
        read_labelled_texts(tmp_path / "a.xlsx")
    (tmp_path / "a.jsonl").write_text('{"text": "a", "label": "b"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not a JSON object"):
        read_labelled_texts(tmp_path / "a.jsonl")


# Sentence pairs (the translator).

def pair_lines(count, start=0):
    return "".join(f"sentence {i}\tSatz {i}\n" for i in range(start, start + count))


def test_pairs_from_tsv_with_or_without_header_and_from_jsonl(tmp_path):
    (tmp_path / "plain.tsv").write_text(pair_lines(12))
    (tmp_path / "header.tsv").write_text("source\ttarget\n" + pair_lines(12))
    (tmp_path / "pairs.txt").write_text("\n" + pair_lines(12) + "\n\n")  # blank lines skipped
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"source": f"sentence {i}", "target": f"Satz {i}", "id": i}) + "\n"
        for i in range(12)))
    expected = ([f"sentence {i}" for i in range(12)], [f"Satz {i}" for i in range(12)])
    for name in ("plain.tsv", "header.tsv", "pairs.txt", "pairs.jsonl"):
        assert read_sentence_pairs(tmp_path / name) == expected, name


def test_bad_pair_lines_are_named(tmp_path):
    (tmp_path / "a.tsv").write_text(pair_lines(5) + "no tab here\n" + pair_lines(5, 5)
                                    + "one\ttwo\tthree\n" + "\tSatz ohne Quelle\n")
    with pytest.raises(ValueError, match=r"3 line\(s\) are not: line 6 has 0 tabs; "
                                         r"line 12 has 2 tabs; line 13 has an empty source"):
        read_sentence_pairs(tmp_path / "a.tsv")
    (tmp_path / "b.jsonl").write_text(json.dumps({"source": "a", "translation": "b"}) + "\n")
    with pytest.raises(ValueError, match="record 1 has no text field 'target'"):
        read_sentence_pairs(tmp_path / "b.jsonl")


def test_too_few_pairs_and_non_utf8_bytes(tmp_path):
    (tmp_path / "few.tsv").write_text(pair_lines(9))
    with pytest.raises(ValueError, match="9 sentence pair.*at least 10"):
        read_sentence_pairs(tmp_path / "few.tsv")
    (tmp_path / "latin1.tsv").write_bytes(pair_lines(10).encode() + "Stra\xdfe\tstreet\n".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"lines 11\)"):
        sources, _ = read_sentence_pairs(tmp_path / "latin1.tsv")
    assert sources[-1] == "Stra\ufffde"
    with pytest.raises(ValueError, match="No such data file"):
        read_sentence_pairs(tmp_path / "missing.tsv")


def test_embedded_message_pairs_are_clean_and_split_the_same_every_time():
    pairs = load_message_pairs("de")
    assert len(pairs) > 4500
    assert sum(pairs.dropped.values()) + len(pairs) > 7000
    for text in pairs.sources + pairs.targets:
        assert text and text == text.strip() and "\n" not in text
        assert not re.search(r"%|\{|<[^>]*>|&\w+;|_", text), text
    assert len(set(pairs.sources)) == len(pairs)
    assert all(s != t for s, t in zip(pairs.sources, pairs.targets))
    index = pairs.sources.index("Copy")  # from "_Copy", its accelerator dropped
    assert pairs.targets[index] == "Kopieren"
    (train, test), (_, test_again) = split_pairs(pairs), split_pairs(pairs)
    assert len(test[0]) == 500 and list(test[0]) == list(test_again[0])
    assert not set(test[0]) & set(train[0])


def test_unknown_message_language_lists_the_known_ones():
    languages = message_languages()
    assert {"de", "fr", "ja", "pt_BR"} <= set(languages)
    with pytest.raises(ValueError, match="no language 'xx'.*They have: ar, ba, .*de"):
        load_message_pairs("xx")
    assert len(load_message_pairs("fr")) > 4500


def test_definitions_topic_task_is_fixed_disjoint_and_labelled_by_wordnet_field():
    from zoo.datasets import NOUN_FIELDS, definitions_test_offsets, load_definitions

    (train, train_labels), (test, test_labels) = load_definitions()
    assert (len(train), len(test)) == (8000, 2000)
    assert set(train_labels) | set(test_labels) <= set(NOUN_FIELDS.values())
    assert len(set(train_labels)) >= 20
    assert all(text.strip() and " | " not in text for text in [*train[:50], *test[:50]])
    (again, _), (again_test, _) = load_definitions()
    assert list(again) == list(train) and list(again_test) == list(test)
    assert len(definitions_test_offsets()) == 2000
    # A data.noun line: offset, field 05 (noun.animal), 0x03 lemmas, pointers, gloss.
    from zoo.datasets import parse_synset

    synset = parse_synset("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 "
                          "@ 02083346 n 0000 | a member of the genus Canis; \"the dog barked\"  \n")
    assert (synset.offset, NOUN_FIELDS[synset.lexicographer_file]) == (2084071, "animal")
    assert synset.lemmas == ["dog", "domestic dog", "Canis familiaris"]
    assert synset.gloss == 'a member of the genus Canis; "the dog barked"'
