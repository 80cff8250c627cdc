"""SQuAD-format directories, one JSON file per language, parallel by question id.

Covers XQuAD, XQuAD-R (with ``sentences``/``sentence_breaks``), MLQA-style files and
translated SQuAD. Paragraphs without sentence breaks are split with a simple punctuation rule.
This module only parses and validates; ``records_from_squad`` turns the parse into training
records, and the evaluation harness builds its candidate pools from the same parse.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from hybrid_dist.data.bad_records import BadRecords
from hybrid_dist.data.records import DataError, ParallelRecord, clip, excerpt, json_problem, not_utf8

PassageText = Literal["sentence", "sentence_and_paragraph"]

# "en.json", "xquad.en.json", "test-context-de-question-de.json" (MLQA, same language only)
_MLQA_NAME = re.compile(r"context-([A-Za-z_-]+?)-question-([A-Za-z_-]+)$")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？؟।])\s+|(?<=[。！？])")


@dataclass(frozen=True)
class SquadQuestion:
    qid: str
    question: str
    answer_start: int
    answer_text: str
    answer_sentences: tuple[int, ...]  # every sentence the answer span overlaps; the first holds its start


@dataclass(frozen=True)
class SquadParagraph:
    context: str
    sentences: tuple[str, ...]
    questions: tuple[SquadQuestion, ...]


@dataclass(frozen=True)
class SquadArticle:
    title: str
    paragraphs: tuple[SquadParagraph, ...]


def language_of(path: Path) -> str:
    """The language code a file name stands for."""
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.stem
    mlqa = _MLQA_NAME.search(stem)
    if mlqa:
        return mlqa.group(1)
    return stem.rsplit(".", 1)[-1]


def language_files(directory: str | Path, languages: list[str] | None = None) -> dict[str, Path]:
    """Language code -> file, for every ``*.json`` in ``directory`` (or only ``languages``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(str(directory), None, None, "not a directory of SQuAD-format JSON files")
    files: dict[str, Path] = {}
    for path in sorted(directory.glob("*.json")):
        lang = language_of(path)
        if lang in files:
            raise DataError(str(path), None, None, f"second file for language '{lang}' (first: {files[lang].name})")
        files[lang] = path
    if languages is not None:
        missing = [lang for lang in languages if lang not in files]
        if missing:
            raise DataError(str(directory), None, None, f"no file for language(s) {missing}; found {sorted(files)}")
        files = {lang: files[lang] for lang in languages}
    if not files:
        raise DataError(str(directory), None, None, "no *.json files")
    return files


def split_sentences(context: str) -> list[tuple[int, int]]:
    """Sentence spans for a paragraph that ships no ``sentence_breaks``."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(context):
        end = match.start()
        if end > start:
            spans.append((start, end))
        start = match.end()
    if start < len(context):
        spans.append((start, len(context)))
    return spans or [(0, len(context))]


def read_squad_file(path: str | Path, bad: BadRecords | None = None, max_chars: int = 0) -> list[SquadArticle]:
    """Parse and validate one file; every problem is a ``DataError`` naming file, record, field.

    A bad question, paragraph or article stops the parse, or with a skipping ``bad`` is dropped
    (counted in questions). An unreadable, non-UTF-8 or invalid JSON file always stops.
    ``max_chars`` > 0 rejects longer contexts and questions (a data bug, not a paragraph)."""
    path = Path(path)
    bad = bad or BadRecords()
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(str(path), f"line {line}", None, not_utf8(raw[:4], e)) from None
    except OSError as e:
        raise DataError(str(path), None, None, f"cannot read: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"line {e.lineno} column {e.colno}", None, json_problem(e, text)) from None
    src = str(path)
    data = _field(doc, "data", list, src, "top level")
    articles = []
    seen: dict[str, tuple[str, str]] = {}
    for a_idx, article in enumerate(data):
        where = f"data[{a_idx}]"
        try:
            title = _field(article, "title", str, src, where)
            raw_paragraphs = _field(article, "paragraphs", list, src, where)
        except DataError as e:
            bad.reject(e, _count_questions(article))
            continue
        paragraphs = []
        for p_idx, para in enumerate(raw_paragraphs):
            try:
                paragraphs.append(_parse_paragraph(para, src, f"{where}.paragraphs[{p_idx}]", seen, bad, max_chars))
            except DataError as e:
                bad.reject(e, _count_questions(para))
        articles.append(SquadArticle(title, tuple(paragraphs)))
    if not seen:
        raise DataError(src, None, "qas", "the file holds no questions (a language with no records)"
                        + (" after skipping bad ones" if bad.count else ""))
    return articles


def _count_questions(obj) -> int:
    """Questions under an article or paragraph that is being skipped, for the skip count."""
    if not isinstance(obj, dict):
        return 1
    if isinstance(obj.get("qas"), list):
        return len(obj["qas"]) or 1
    if isinstance(obj.get("paragraphs"), list):
        return sum(_count_questions(p) for p in obj["paragraphs"]) or 1
    return 1


def _parse_paragraph(para, src: str, where: str, seen: dict[str, tuple[str, str]], bad: BadRecords,
                     max_chars: int = 0) -> SquadParagraph:
    context = _field(para, "context", str, src, where)
    if max_chars and len(context) > max_chars:
        raise DataError(src, where, "context", f"{len(context):,} characters, more than data.max_text_chars={max_chars:,}")
    if "sentence_breaks" in para:
        breaks = _field(para, "sentence_breaks", list, src, where)
        spans = []
        for i, span in enumerate(breaks):
            if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)):
                raise DataError(src, where, f"sentence_breaks[{i}]", f"expected [start, end], got {clip(repr(span), 60)}")
            if not 0 <= span[0] <= span[1] <= len(context):
                raise DataError(src, where, f"sentence_breaks[{i}]", f"{span} outside the context (length {len(context)})")
            spans.append((span[0], span[1]))
    else:
        spans = split_sentences(context)
    if "sentences" in para:
        sentences = _field(para, "sentences", list, src, where)
        if len(sentences) != len(spans):
            raise DataError(src, where, "sentences", f"{len(sentences)} sentences but {len(spans)} sentence_breaks")
    else:
        sentences = [context[b:e].strip() for b, e in spans]
    questions = []
    for q_idx, qa in enumerate(_field(para, "qas", list, src, where)):
        try:
            questions.append(_parse_question(qa, context, spans, src, f"{where}.qas[{q_idx}]", seen, max_chars))
        except DataError as e:
            bad.reject(e)
    return SquadParagraph(context, tuple(str(s) for s in sentences), tuple(questions))


def _parse_question(qa, context: str, spans: list[tuple[int, int]], src: str, q_where: str,
                    seen: dict[str, tuple[str, str]], max_chars: int) -> SquadQuestion:
    qid = str(_field(qa, "id", (str, int), src, q_where))
    q_where = f"{q_where} (id {clip(qid, 80)})"
    question = _field(qa, "question", str, src, q_where)
    if not question.strip():
        raise DataError(src, q_where, "question", "empty question")
    if max_chars and len(question) > max_chars:
        raise DataError(src, q_where, "question", f"{len(question):,} characters, more than data.max_text_chars={max_chars:,}")
    answers = _field(qa, "answers", list, src, q_where)
    if not answers:
        raise DataError(src, q_where, "answers", "no answer")
    answer = answers[0]
    start = _field(answer, "answer_start", int, src, f"{q_where}.answers[0]")
    answer_text = _field(answer, "text", str, src, f"{q_where}.answers[0]")
    end = start + len(answer_text)
    if start < 0 or end > len(context):
        raise DataError(src, f"{q_where}.answers[0]", "answer_start",
                        f"span [{start}, {end}) outside the context (length {len(context)})")
    if context[start:end] != answer_text:
        raise DataError(src, f"{q_where}.answers[0]", "text",
                        f"{excerpt(answer_text)} does not match the context at {start} ({excerpt(context[start:end])})")
    overlapping = tuple(i for i, (b, e) in enumerate(spans) if b < max(end, start + 1) and e > start)
    if not overlapping:  # the start sits in the whitespace between two sentences
        overlapping = tuple(i for i, (b, _) in enumerate(spans) if b >= start)[:1]
    if not overlapping:
        raise DataError(src, f"{q_where}.answers[0]", "answer_start", "not inside any sentence")
    if qid in seen and seen[qid][1] != question:  # an exact repeat is fine: MLQA repeats paragraphs
        first_where, first = seen[qid]
        raise DataError(src, q_where, "id", f"duplicate id with a different question (first: {excerpt(first)}, "
                                            f"at {first_where})")
    seen.setdefault(qid, (q_where, question))
    return SquadQuestion(qid, question, start, answer_text, overlapping)


def _field(obj, name: str, types, src: str, where: str):
    if not isinstance(obj, dict):
        raise DataError(src, where, name, f"expected an object holding '{name}', got {type(obj).__name__}")
    if name not in obj:
        raise DataError(src, where, name, "missing")
    value = obj[name]
    if not isinstance(value, types) or isinstance(value, bool):
        expected = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(src, where, name, f"expected {expected}, got {type(value).__name__}")
    return value


def read_squad_dir(directory: str | Path, languages: list[str] | None = None, bad: BadRecords | None = None,
                   max_chars: int = 0) -> dict[str, list[SquadArticle]]:
    """The files of ``languages`` (all when ``None``), parsed, with the directory's one article
    identity (:func:`read_squad_articles`)."""
    return read_squad_articles(directory, languages, bad, max_chars)[0]


def read_squad_articles(directory: str | Path, languages: list[str] | None = None, bad: BadRecords | None = None,
                        max_chars: int = 0) -> tuple[dict[str, list[SquadArticle]], list[str]]:
    """``(parsed languages, article order)``: the one article identity that training and
    evaluation share.

    Titles are unified over **every** language file of the directory, not only ``languages``, and
    the order (which the ``parity`` split uses) is read over all of them too: so the training side
    (``data.train_languages``) and the evaluation side (``data.languages``) key every article
    the same, whatever titles a language translates. Files outside ``languages`` only link
    articles: their bad records are skipped silently and an unreadable one is left out."""
    selected = language_files(directory, languages)
    parsed: dict[str, list[SquadArticle]] = {}
    for lang, path in language_files(directory).items():
        if lang in selected:
            parsed[lang] = read_squad_file(path, bad, max_chars)
        else:
            try:
                parsed[lang] = read_squad_file(path, BadRecords("skip"), max_chars)
            except DataError:
                continue
    unified = unify_titles(parsed)
    return {lang: unified[lang] for lang in selected}, article_order(unified)


def unify_titles(parsed: dict[str, list[SquadArticle]]) -> dict[str, list[SquadArticle]]:
    """Every article re-titled with one language-independent key: articles that share a question
    id (the same article in two languages, whatever its titles) get the title the first of them
    has, reading languages in sorted order. The split keys on titles, so a question can then never
    train in one language and be held out in another."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    first_article_of: dict[str, tuple[str, int]] = {}
    position: dict[tuple[str, int], int] = {}  # first-appearance order: the earlier root names the article
    for lang in sorted(parsed):
        for a_idx, article in enumerate(parsed[lang]):
            node = parent.setdefault((lang, a_idx), (lang, a_idx))
            position.setdefault(node, len(position))
            for para in article.paragraphs:
                for q in para.questions:
                    other = first_article_of.setdefault(q.qid, node)
                    a, b = root(node), root(other)
                    if a != b:  # the earlier node stays the root: it names the article
                        if position[a] < position[b]:
                            parent[b] = a
                        else:
                            parent[a] = b
    title = {node: parsed[root(node)[0]][root(node)[1]].title for node in parent}
    return {lang: [a if a.title == title[(lang, i)] else replace(a, title=title[(lang, i)])
                   for i, a in enumerate(articles)]
            for lang, articles in parsed.items()}


def article_order(parsed: dict[str, list[SquadArticle]]) -> list[str]:
    """Article titles in order of first appearance, reading languages in sorted order; the
    ``parity`` split uses these positions."""
    order: dict[str, None] = {}
    for lang in sorted(parsed):
        for article in parsed[lang]:
            order.setdefault(article.title, None)
    return list(order)


def records_from_squad(
    parsed: dict[str, list[SquadArticle]],
    passage_text: PassageText = "sentence",
    max_hard_negatives: int = 0,
) -> list[ParallelRecord]:
    """One record per (question, language); the positive is the sentence holding the answer start.

    ``max_hard_negatives`` keeps up to that many other sentences of the same paragraph, then of
    the same article, as hard negatives."""
    if passage_text not in ("sentence", "sentence_and_paragraph"):
        raise ValueError(f"passage_text must be 'sentence' or 'sentence_and_paragraph', got {passage_text!r}")
    records = []
    for lang in sorted(parsed):
        for a_idx, article in enumerate(parsed[lang]):
            article_sentences = [(p_idx, s_idx, s) for p_idx, p in enumerate(article.paragraphs)
                                 for s_idx, s in enumerate(p.sentences)]
            for p_idx, para in enumerate(article.paragraphs):
                for q in para.questions:
                    s_idx = q.answer_sentences[0]
                    sentence = para.sentences[s_idx]
                    positive = sentence if passage_text == "sentence" else f"{sentence}\n{para.context}"
                    negatives: dict[str, str] = {}  # text -> id, first occurrence (texts repeat)
                    if max_hard_negatives > 0:
                        answer = set(q.answer_sentences)
                        same_para = [(f"{lang}/{a_idx}/{p_idx}/{i}", s) for i, s in enumerate(para.sentences)
                                     if i not in answer]
                        others = [(f"{lang}/{a_idx}/{pi}/{si}", s) for pi, si, s in article_sentences if pi != p_idx]
                        for nid, text in same_para + others:
                            if text != sentence and len(negatives) < max_hard_negatives:
                                negatives.setdefault(text, nid)
                    records.append(ParallelRecord(
                        group_id=q.qid, lang=lang, query=q.question, positive=positive,
                        negatives=tuple(negatives), negative_ids=tuple(negatives.values()),
                        article=article.title, positive_id=f"{lang}/{a_idx}/{p_idx}/{s_idx}",
                    ))
    return records
