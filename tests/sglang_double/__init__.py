"""A test double of SGLang 0.5.23's weight-update side (SGLang itself needs CUDA): its HTTP endpoints and, per TP
rank, its scheduler's process-group join and broadcast receive, written from SGLang's source (not copied)."""
