"""Search-R1-style data: `rlpost preprocess search-r1` on the real offline packages (a Wikipedia corpus and FanOutQA
questions it answers, split by evidence page), and verl's own Search-R1 parquet rows loading unchanged."""

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlpost.cli import main
from rlpost.data.dataset import RLDataset
from rlpost.data.io import read_rows
from rlpost.data.preprocess import search_r1
from rlpost.rewards.registry import RewardScorer
from rlpost.rewards.search_r1 import normalize_answer
from rlpost.tools import load_tools

VERL_SEARCH_TOOL = """
tools:
  - class_name: verl.tools.search_tool.SearchTool
    config:
      retrieval_service_url: http://127.0.0.1:8000/retrieve
      num_workers: 120
      rate_limit: 120
      timeout: 30
      type: native
    tool_schema:
      type: function
      function:
        name: search
        description: Looks up passages for each query.
        parameters:
          type: object
          properties:
            query_list:
              type: array
              item:
                type: string
              description: Queries to look up.
          required:
            - query_list
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default build, once for the module: (paths, counts, corpus rows, train rows, test rows)."""
    paths, counts = search_r1.build_default(tmp_path_factory.mktemp("search_r1"))
    return paths, counts, read_rows(paths["corpus"]), read_rows(paths["train"]), read_rows(paths["test"])


@pytest.fixture(scope="module")
def search_tool(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "search.yaml"
    path.write_text(VERL_SEARCH_TOOL)
    return load_tools(path)["search"]


@pytest.fixture(scope="module")
def qwen():
    from rlpost.models.tokenizers import packaged_tokenizer

    return packaged_tokenizer("qwen2.5")


def test_corpus_is_every_wikipedia_summary_in_search_r1s_format(built):
    _, counts, corpus, _, _ = built
    assert counts.documents == len(corpus) == 10_033
    assert [d["id"] for d in corpus] == [str(i) for i in range(10_033)]
    titles = [d["contents"].split("\n", 1)[0] for d in corpus]
    assert all(t.startswith('"') and t.endswith('"') and len(t) > 2 for t in titles)
    assert len(set(titles)) == 10_033
    assert all(d["contents"].split("\n", 1)[1].strip() for d in corpus)
    paris = next(d for d in corpus if d["contents"].startswith('"Paris"\n'))
    assert "capital" in paris["contents"] and "France" in paris["contents"]


def test_every_question_is_answered_by_its_evidence_page(built):
    _, counts, corpus, train, test = built
    pages = {d["contents"].split("\n", 1)[0][1:-1]: d["contents"] for d in corpus}
    rows = train + test
    assert counts.sub_questions > counts.page_in_corpus > counts.answer_in_page >= counts.questions > 50
    assert counts.questions + counts.description_questions == len(rows) and counts.description_questions > 8000
    for r in rows:
        extra, targets = r["extra_info"], r["reward_model"]["ground_truth"]["target"]
        evidence = " ".join(normalize_answer(pages[t]) for t in extra["evidence_titles"])
        assert any(f" {normalize_answer(t)} " in f" {evidence} " for t in targets), extra["question"]
        source = "searchR1_fanoutqa" if extra["fanoutqa_ids"] else "searchR1_wikidesc"
        assert r["data_source"] == source and r["ability"] == "fact-reasoning"
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert r["prompt"][1]["content"].endswith("Question: " + extra["question"])
        assert extra["tools_kwargs"] == {"search": {"create_kwargs": {
            "ground_truth": {"target": targets}, "question": extra["question"], "data_source": source}}}
        if source == "searchR1_wikidesc":  # the answer is the evidence page's title, and not in the question
            assert targets == extra["evidence_titles"] and len(targets) == 1
            assert f" {normalize_answer(targets[0])} " not in f" {normalize_answer(extra['question'])} "
    scores, _ = RewardScorer().score([f"<think>found it</think><answer>{r['reward_model']['ground_truth']['target'][0]}"
                                      "</answer>" for r in rows], [r["data_source"] for r in rows],
                                     [r["reward_model"]["ground_truth"] for r in rows])
    assert scores == [1.0] * len(rows)


def test_train_and_test_share_no_question_and_no_evidence_page(built):
    _, counts, _, train, test = built
    assert (counts.train, counts.test) == (len(train), len(test)) and 0.15 < len(test) / (len(train) + len(test)) < 0.3
    assert [r["extra_info"]["index"] for r in train] == list(range(len(train)))
    assert [{r["extra_info"]["split"] for r in rows} for rows in (train, test)] == [{"train"}, {"test"}]
    questions = [{normalize_answer(r["extra_info"]["question"]) for r in rows} for rows in (train, test)]
    pages = [{p for r in rows for p in r["extra_info"]["evidence_titles"]} for rows in (train, test)]
    assert len(questions[0]) == len(train) and len(questions[1]) == len(test)  # deduplicated
    assert not questions[0] & questions[1] and not pages[0] & pages[1]
    assert (len(pages[0]), len(pages[1])) == (counts.train_pages, counts.test_pages)


def test_cli_prints_the_counts_and_rebuilds_the_same_files(built, tmp_path, capsys):
    paths, counts, _, _, _ = built
    assert main(["preprocess", "search-r1", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"corpus: {counts.documents} Wikipedia summaries" in printed
    assert f"answer in that page's summary: {counts.answer_in_page} ({counts.questions} distinct questions)" in printed
    assert f"train: {counts.train} questions over {counts.train_pages} pages" in printed
    for name in ("corpus.jsonl", "train.parquet", "test.parquet"):
        assert read_rows(tmp_path / name) == read_rows(paths[name.split(".")[0]])


def verl_row(index: int, data_source: str, question: str, answers: list[str], split: str) -> dict:
    """One row as verl's examples/data_preprocess/preprocess_search_r1_dataset.py writes it (its columns and keys;
    the texts here are made up)."""
    ground_truth = {"target": answers}
    return {
        "data_source": data_source,
        "prompt": [{"role": "system", "content": "You answer questions."},
                   {"role": "user", "content": "Think in <think></think>, search with the tool, answer in "
                                               f"<answer></answer>. Question: {question}"}],
        "ability": "fact-reasoning",
        "reward_model": {"ground_truth": ground_truth, "style": "rule"},
        "extra_info": {"index": index, "need_tools_kwargs": True, "question": question, "split": split,
                       "tools_kwargs": {"search": {"create_kwargs": {
                           "ground_truth": ground_truth, "question": question, "data_source": data_source}}}},
        "metadata": None,
    }


def test_verls_search_r1_parquet_loads_unchanged_with_the_search_tool(tmp_path, qwen, search_tool):
    rows = [verl_row(0, "searchR1_nq", "which river runs through lyon", ["Rhône", "Rhone"], "train"),
            verl_row(1, "searchR1_hotpotqa", "who wrote the little prince", ["Antoine de Saint-Exupéry"], "train")]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert pq.read_schema(path).names == ["data_source", "prompt", "ability", "reward_model", "extra_info", "metadata"]
    ds = RLDataset([path], qwen, max_prompt_length=2048, tools=[search_tool.tool_schema.model_dump()])
    assert len(ds) == 2
    for sample, r in zip(ds.samples, rows):
        assert sample.data_source == r["data_source"] and sample.ground_truth == r["reward_model"]["ground_truth"]
        assert sample.tools_kwargs == r["extra_info"]["tools_kwargs"]
        rendered = qwen.decode(sample.prompt_ids)
        assert '"name": "search"' in rendered and "query_list" in rendered and r["extra_info"]["question"] in rendered
    scorer = RewardScorer()
    scorer.check_sources([s.data_source for s in ds])
    scores, _ = scorer.score(["<answer>the Rhone</answer>", "<answer>Saint-Exupéry</answer>"],
                             [s.data_source for s in ds], [s.ground_truth for s in ds])
    assert scores == [1.0, 0.0]

    async def create():  # what the agent loop does with a row's create_kwargs
        instance, _ = await search_tool.create(**ds[0].tools_kwargs["search"]["create_kwargs"])
        await search_tool.release(instance)
        return instance

    assert asyncio.run(create())


def test_the_built_rows_load_like_verls(built, qwen, search_tool):
    paths, counts, _, _, _ = built
    ds = RLDataset([paths["train"], paths["test"]], qwen, max_prompt_length=1024,
                   tools=[search_tool.tool_schema.model_dump()])
    assert len(ds) == counts.questions + counts.description_questions and ds.n_filtered == 0
    RewardScorer().check_sources([s.data_source for s in ds])
    assert json.loads(json.dumps(ds[0].tools_kwargs))["search"]["create_kwargs"]["data_source"] == ds[0].data_source
