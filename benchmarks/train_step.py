"""Measures rlpost's megatron-core training path (tp=1) against the `transformers` model: forward+backward tokens/s
on SmolLM2-135M, same batch, one process (gloo world of 1 on CPU, NCCL on a GPU). Target: ratio >= 1.

Both sides compute the same loss (mean token log-prob through the vocabulary) and its backward; the first
iterations are warm-up. Prints tokens/s per side and the ratio.

    python benchmarks/train_step.py [--batch 4] [--length 256] [--iters 5] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def time_it(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from rlpost.dtypes import torch_dtype
    from rlpost.megatron.forward import run_schedule, token_logprobs
    from rlpost.megatron.model import build_stage
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.models.hf import resolve_model_path
    from rlpost.net import free_port

    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    path = resolve_model_path(args.model)
    dtype = torch_dtype(args.dtype)

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).train()
    ids = torch.randint(0, hf.config.vocab_size, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)

    def hf_step(model=hf):
        logits = model(ids).logits[:, :-1].float()
        loss = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    t_hf = time_it(hf_step, args.iters, args.warmup)
    del hf, hf_step  # free its memory before megatron's model is built

    setup_model_parallel(1, 1, seed=0)
    stage = build_stage(path, dtype=args.dtype)
    stage.module.train()

    def megatron_step():
        def loss(logits, mb):
            lp, _ = token_logprobs(stage, logits, mb["input_ids"])
            return -lp.mean(), {}

        run_schedule(stage, [{"input_ids": ids}], loss, forward_only=False)
        stage.module.zero_grad(set_to_none=True)

    t_meg = time_it(megatron_step, args.iters, args.warmup)
    tokens = args.batch * args.length
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} · {args.model} · {args.dtype} · "
          f"batch {args.batch} x {args.length} tokens · torch threads {torch.get_num_threads()}")
    print(f"{'engine':<28} {'s/step':>8} {'tokens/s':>10}")
    print(f"{'transformers (baseline)':<28} {t_hf:>8.3f} {tokens / t_hf:>10.0f}")
    print(f"{'rlpost megatron tp=1':<28} {t_meg:>8.3f} {tokens / t_meg:>10.0f}")
    print(f"ratio (rlpost / transformers tokens/s): {t_hf / t_meg:.2f}x")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
