"""MLQA-R: the LAReQA re-cast of MLQA v1 (7 languages).

Input: the official MLQA directory (``MLQA_V1/test`` or ``MLQA_V1/dev``, or their parent), files
``<split>-context-<C>-question-<Q>.json`` in SQuAD format. MLQA-R uses the same-language files
(``C == Q``) only. MLQA instances are parallel across languages by ``id``; every instance has an
English version, so each language's articles are re-titled with the English title of their
questions, which makes one article split apply to all languages (the parity / hash split keys
on titles). Paragraphs repeated in a language are merged (their candidates would otherwise
appear twice, one copy never counted relevant).

Sentences come from ``read_squad_file`` (MLQA ships no ``sentence_breaks``, so its punctuation
splitter is used). :func:`write_squad_dir` saves the result in the XQuAD-R layout
(``<lang>.json`` with ``sentences`` and ``sentence_breaks``) so it loads like XQuAD-R.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from hybrid_dist.data.records import DataError
from hybrid_dist.data.squad import SquadArticle, SquadParagraph, read_squad_file

MLQA_LANGUAGES = ["ar", "de", "en", "es", "hi", "vi", "zh"]
_FILE = re.compile(r"^(dev|test)-context-([A-Za-z_-]+?)-question-([A-Za-z_-]+)\.json$")


def mlqa_files(mlqa_dir: str | Path, split: str = "test") -> dict[str, Path]:
    """Language -> ``<split>-context-X-question-X.json`` under ``mlqa_dir`` (searched in the
    directory itself, then ``<dir>/<split>``)."""
    mlqa_dir = Path(mlqa_dir)
    if not mlqa_dir.is_dir():
        raise DataError(str(mlqa_dir), None, None, "not a directory (expected the MLQA_V1 folder)")
    files: dict[str, Path] = {}
    for folder in (mlqa_dir, mlqa_dir / split):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = _FILE.match(path.name)
            if m and m.group(1) == split and m.group(2) == m.group(3):
                files.setdefault(m.group(2), path)
    return files


def is_mlqa_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and bool(mlqa_files(path, "test") or mlqa_files(path, "dev"))


def build_mlqa_r(
    mlqa_dir: str | Path,
    languages: list[str] | None = None,
    split: str = "test",
) -> dict[str, list[SquadArticle]]:
    """Parsed MLQA-R: language -> articles, titles unified through the English instances."""
    languages = list(languages or MLQA_LANGUAGES)
    files = mlqa_files(mlqa_dir, split)
    missing = [lang for lang in languages if lang not in files]
    if missing:
        raise DataError(str(mlqa_dir), None, None,
                        f"no {split}-context-X-question-X.json file for language(s) {missing}; found {sorted(files)}")
    parsed = {lang: read_squad_file(files[lang]) for lang in languages}
    if "en" in languages:
        pivot = parsed["en"]
    elif "en" in files:
        pivot = read_squad_file(files["en"])
    else:
        pivot = None
    title_of: dict[str, str] = {}
    if pivot is not None:
        for article in pivot:
            for para in article.paragraphs:
                for q in para.questions:
                    title_of[q.qid] = article.title
    return {lang: _normalise(parsed[lang], title_of, lang) for lang in languages}


def _normalise(articles: list[SquadArticle], title_of: dict[str, str], lang: str) -> list[SquadArticle]:
    """Re-title by the English title of the questions (most common), merge articles that get the
    same title, merge paragraphs with the same context, drop repeated question ids."""
    merged: dict[str, dict[str, list]] = {}
    seen_q: set[str] = set()
    for article in articles:
        votes = Counter(title_of[q.qid] for p in article.paragraphs for q in p.questions if q.qid in title_of)
        title = votes.most_common(1)[0][0] if votes else f"{lang}:{article.title}"
        paras = merged.setdefault(title, {})
        for para in article.paragraphs:
            entry = paras.setdefault(para.context, [para, []])
            for q in para.questions:
                if q.qid not in seen_q:
                    seen_q.add(q.qid)
                    entry[1].append(q)
    out = []
    for title, paras in merged.items():
        paragraphs = tuple(SquadParagraph(p.context, p.sentences, tuple(qs)) for p, qs in paras.values())
        out.append(SquadArticle(title, paragraphs))
    return out


def _sentence_breaks(context: str, sentences: tuple[str, ...]) -> list[list[int]]:
    spans, pos = [], 0
    for s in sentences:
        start = context.find(s, pos)
        if start < 0:
            raise ValueError(f"sentence {s[:40]!r} not found in its paragraph")
        spans.append([start, start + len(s)])
        pos = start + len(s)
    return spans


def write_squad_dir(parsed: dict[str, list[SquadArticle]], out_dir: str | Path) -> Path:
    """Write ``<lang>.json`` files in the XQuAD-R layout (``sentences`` + ``sentence_breaks``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for lang, articles in parsed.items():
        data = []
        for article in articles:
            paragraphs = []
            for para in article.paragraphs:
                paragraphs.append({
                    "context": para.context,
                    "sentences": list(para.sentences),
                    "sentence_breaks": _sentence_breaks(para.context, para.sentences),
                    "qas": [{"id": q.qid, "question": q.question,
                             "answers": [{"answer_start": q.answer_start, "text": q.answer_text}]}
                            for q in para.questions],
                })
            data.append({"title": article.title, "paragraphs": paragraphs})
        (out / f"{lang}.json").write_text(json.dumps({"version": "mlqa-r", "data": data}, ensure_ascii=False),
                                          encoding="utf-8")
    return out
