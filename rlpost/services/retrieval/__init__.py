"""`rlpost serve retrieval`: a Search-R1-compatible retrieval server (POST /retrieve) over a JSONL corpus, with a
sparse (bm25s) or dense (all-MiniLM-L6-v2 + faiss) index built once and saved beside the corpus."""
