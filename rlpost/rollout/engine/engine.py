"""The embedded generation engine: continuous batching over a slot KV cache, all compute on one thread.

Each step either prefills newly admitted requests (packed, sharing keys/values between identical prompts and
reusing saved prefixes) or decodes one token for every running sequence; requests join and leave between steps.
Everything that touches the model or the cache (weight updates, aborts, pauses, memory release) runs on the engine
thread between steps, queued as commands, so no lock is held during a forward pass.

Keep every torch op of a process on one thread: on CPU each thread that enters a parallel region gets its own
OpenMP team, and two teams on the same cores halve matmul speed (measured 0.07 vs 0.17 ms for a [64, 576] bf16
linear). So the server runs the loop in its main thread (`serve_forever`), where the model was loaded, and answers
HTTP from another; in-process callers use `run`, which steps in the calling thread; `start` (a background loop)
is for callers that submit from several threads.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from rlpost.models.vision import text_config
from rlpost.rollout.engine.images import ImagePreparer
from rlpost.rollout.engine.kv_cache import KVCache
from rlpost.rollout.engine.model import DecoderLM, PrefillSegment
from rlpost.rollout.engine.prefix_cache import PrefixCache
from rlpost.rollout.engine.request import Request, RequestError
from rlpost.rollout.engine.sampler import RowSettings, apply_penalties, sample


def abort_reason(message: str) -> dict:
    return {"type": "abort", "message": message, "status_code": None, "err_type": None}


def _engine_error(exc: Exception) -> str:
    return f"engine error: {type(exc).__name__}: {exc}"


def _check_token_ids(ids, vocab: int, what: str) -> None:
    # type, not isinstance: JSON true/false arrive as bools, which are ints to Python and break the model's lookup
    bad = next((t for t in ids if type(t) is not int), None)
    if bad is not None:
        raise RequestError(f"{what} {bad!r} is not an integer")
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise RequestError(f"{what} {bad} is outside the vocabulary [0, {vocab})")


class Engine:
    def __init__(self, model_path: str | Path, dtype: str = "bfloat16", max_running: int = 64,
                 context_length: int | None = None, max_prefill_tokens: int = 4096,
                 prefix_cache_tokens: int = 16384, seed: int = 0, deterministic: bool = False):
        """deterministic: SGLang's --enable-deterministic-inference, the only mode in which it honours
        sampling_seed (rlpost.rollout.engine.server says how)."""
        from transformers import AutoTokenizer

        self.model_path = str(model_path)
        self.model = DecoderLM.from_pretrained(model_path, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.image_preparer = None if self.model.visual is None else ImagePreparer(
            model_path, self.model.image_token_id, self.model.dims.vision.merge)
        eos = set()
        generation_config = Path(model_path) / "generation_config.json"
        config = self.model.config
        sources = [getattr(config, "eos_token_id", None), getattr(text_config(config), "eos_token_id", None)]
        if generation_config.is_file():  # Qwen2.5-Instruct stops on <|endoftext|> only through this file
            sources.append(json.loads(generation_config.read_text()).get("eos_token_id"))
        for ids in sources:
            eos.update(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        self.context_length = min(context_length or self.model.max_positions, self.model.max_positions)
        self.max_running, self.max_prefill_tokens = max_running, max_prefill_tokens
        d = self.model.dims
        self.cache = KVCache(d.num_layers, max_running, d.kv_heads, d.head_dim, self.model.dtype, self.context_length)
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.generator = torch.Generator().manual_seed(seed)
        self.deterministic = deterministic
        self.weight_version = "default"
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # index == cache row
        self.paused = False
        self.released: set[str] = set()
        self.stats = {"steps": 0, "prefill_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        self._incoming: deque[Request] = deque()
        self._commands: deque[tuple[Callable[[], Any], Future]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> Engine:
        """Run the loop on a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="rlpost-engine", daemon=True)
        self._thread.start()
        return self

    # ---- called from any thread ----------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        self.check(request)
        with self._wake:
            self._incoming.append(request)
            self._wake.notify()

    def prepare_images(self, input_ids: list[int], image_data: list) -> dict[str, Any]:
        """The Request fields of a prompt with images (SGLang's image_data items): its ids with each image's run of
        image tokens, the processed images and the mRoPE positions. CPU work: callers run it off their event loop."""
        if not image_data:
            return {"input_ids": list(input_ids)}
        if self.image_preparer is None:
            raise RequestError(f"image_data was sent but the model ({self.model.config.model_type}) is text-only")
        images = self.image_preparer.images(image_data)
        ids, positions = self.image_preparer.expand(input_ids, images)
        return {"input_ids": ids, "images": images, "rope_positions": positions,
                "image_token_id": self.model.image_token_id}

    def check(self, request: Request) -> None:
        """Refuse what cannot run; fill max_new_tokens=None with the rest of the context, as SGLang does."""
        if not request.input_ids:
            raise RequestError("the prompt is empty (no input tokens)")
        vocab = self.model.dims.vocab
        _check_token_ids(request.input_ids, vocab, "input token id")
        if self.model.visual is not None:
            pads = sum(t == self.model.image_token_id for t in request.input_ids)
            if pads != sum(image.tokens for image in request.images):
                raise RequestError(f"the prompt has {pads} image token(s) but {len(request.images)} image(s) "
                                   f"({sum(image.tokens for image in request.images)} image tokens) were given")
        if len(request.input_ids) >= self.context_length:
            raise RequestError(f"the prompt has {len(request.input_ids)} tokens; the context length is "
                               f"{self.context_length}")
        if request.params.max_new_tokens is None:
            request.params.max_new_tokens = self.context_length - len(request.input_ids)
        _check_token_ids(request.params.stop_token_ids or (), vocab, "sampling_params.stop_token_ids:")
        if request.return_logprob:
            if not 0 <= request.top_logprobs_num <= vocab:
                raise RequestError(f"top_logprobs_num must be in [0, {vocab}], got {request.top_logprobs_num}")
            if request.logprob_start_len >= len(request.input_ids):
                raise RequestError(f"logprob_start_len {request.logprob_start_len} is not below the prompt length "
                                   f"{len(request.input_ids)}")

    def run(self, requests: list[Request], timeout_s: float | None = None) -> list[Request]:
        """Generate to completion: steps in the calling thread, or waits on the background loop if started."""
        for req in requests:
            self.submit(req)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not all(r.finished_at is not None for r in requests):  # retired, not just marked finished
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"requests not finished after {timeout_s}s")
            if self._thread is None:
                self._loop_once(block=False)
            else:
                time.sleep(0.001)
        return requests

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the engine thread between steps."""
        future: Future = Future()
        with self._wake:
            self._commands.append((fn, future))
            self._wake.notify()
        return future

    def request_stop(self) -> None:
        """Make serve_forever return after the current step, failing what is in flight (safe from a signal
        handler: no lock)."""
        self._stopping = True

    def shutdown(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    # ---- commands (run on the engine thread via call) ------------------------------------------------------------

    def abort(self, rid: str | None = None, message: str = "Aborted") -> int:
        """Finish matching requests (all when rid is None) with finish_reason abort; returns how many."""
        self._drain_incoming()

        def hit(r: Request) -> bool:
            return rid is None or r.rid == rid or r.rid.startswith(f"{rid}-")

        waiting, running = [r for r in self.waiting if hit(r)], [r for r in self.running if hit(r)]
        for r in waiting + running:
            r.finish_reason = abort_reason(message)
        self.waiting = deque(r for r in self.waiting if not r.finished)
        for r in waiting:
            self._notify(r)
        self._retire()
        return len(waiting) + len(running)

    def pause(self, mode: str) -> None:
        if mode == "abort":
            self.abort()
        elif mode == "retract":
            self._drain_incoming()
            for row in reversed(range(len(self.running))):
                self._save_prefix(self.running[row], row)
            self.waiting.extendleft(reversed(self.running))
            self.running = []
        elif mode != "in_place":
            raise RequestError(f"pause mode '{mode}' is not one of abort, retract, in_place")
        self.paused = True

    def resume_generation(self) -> None:
        self.paused = False

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]], flush_cache: bool = True,
                     weight_version: str | None = None) -> int:
        if "weights" in self.released:
            raise RequestError("weights are released; call /resume_memory_occupation first")
        count = self.model.load_weights(named)
        if flush_cache:
            self.prefix_cache.clear()
        if weight_version is not None:
            self.weight_version = weight_version
        return count

    def flush_cache(self) -> bool:
        """Like SGLang, refuse while requests are in flight (their keys/values are live)."""
        if self.running or self.waiting or self._incoming:
            return False
        self.prefix_cache.clear()
        return True

    def release_memory(self, tags: list[str] | None) -> None:
        tags = set(tags or ("weights", "kv_cache"))
        unknown = tags - {"weights", "kv_cache", "cuda_graph"}
        if unknown:
            raise RequestError(f"unknown memory tags {sorted(unknown)}; expected weights, kv_cache, cuda_graph")
        self._drain_incoming()
        if self.running or (self.waiting and not self.paused):
            raise RequestError("requests are in flight; pause generation (abort or retract) or wait for them "
                               "before releasing memory")
        if "kv_cache" in tags and "kv_cache" not in self.released:
            self.cache.release()
            self.prefix_cache.clear()
        if "weights" in tags and "weights" not in self.released:
            self.model.release()
        self.released |= tags & {"weights", "kv_cache"}

    def resume_memory(self, tags: list[str] | None) -> None:
        tags = set(tags or ("weights", "kv_cache"))
        if "weights" in tags and "weights" in self.released:
            self.model.resume()
        self.released -= tags

    # ---- the loop ------------------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        while self._loop_once(block=True):
            pass

    def _loop_once(self, block: bool) -> bool:
        """Run queued commands, then one step if there is work; False once shut down."""
        with self._wake:
            while block and not (self._stopping or self._commands or
                                 (not self.paused and (self._incoming or self.waiting or self.running))):
                self._wake.wait(timeout=0.5)  # wakes for request_stop, which cannot notify from a signal handler
            if self._stopping:
                self._drain_incoming()
                self._fail_all("server shutting down")
                return False
            commands = list(self._commands)
            self._commands.clear()
        for fn, future in commands:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - the caller gets the exception through its future
                future.set_exception(exc)
        self._drain_incoming()
        if self.paused or not (self.waiting or self.running):
            return True
        try:
            self._step()
        except Exception as exc:  # noqa: BLE001 - a decode step has no single culprit: fail its batch, keep serving
            self._fail_all(_engine_error(exc))
        return True

    def _drain_incoming(self) -> None:
        with self._wake:
            while self._incoming:
                self.waiting.append(self._incoming.popleft())

    def _fail_all(self, message: str) -> None:
        for r in list(self.waiting) + self.running:
            r.finish_reason = abort_reason(message)
            self._notify(r)
        self.waiting.clear()
        self.running = []

    def _step(self) -> None:
        if "weights" in self.released or "kv_cache" in self.released:
            self._fail_all("memory is released; call /resume_memory_occupation before generating")
            return
        admitted = self._admit()
        if admitted:
            self._prefill_each_on_failure(admitted)
        elif self.running:
            self._decode()
        self.stats["steps"] += 1
        self._retire()

    def _admit(self) -> list[Request]:
        batch, budget = [], self.max_prefill_tokens
        while self.waiting and len(self.running) + len(batch) < self.max_running:
            need = self.waiting[0].length
            if batch and need > budget:
                break
            batch.append(self.waiting.popleft())
            budget -= need
        return batch

    def _prefill_each_on_failure(self, batch: list[Request]) -> None:
        """A packed prefill that raises is redone request by request, so only the request that broke it fails and
        the rest of the batch, and every sequence already decoding, carry on."""
        rows = len(self.running)
        try:
            self._prefill(batch)
            return
        except Exception as exc:  # noqa: BLE001 - retried below to find the request that caused it
            del self.running[rows:]
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
        for req in batch:
            try:
                self._prefill([req])
            except Exception as exc:  # noqa: BLE001 - this request's own failure, reported to it
                del self.running[rows:]
                self._fail(req, exc)
            rows = len(self.running)

    def _fail(self, req: Request, exc: Exception) -> None:
        req.finish_reason = abort_reason(_engine_error(exc))
        self._notify(req)

    def _prefill(self, batch: list[Request]) -> None:
        self.cache.ensure(max(r.length for r in self.running + batch) + 1)
        segments, tokens, copies, last_index = [], [], [], {}
        first_with: dict[tuple[int, ...], int] = {}
        # requests wanting prompt log-probs: (request, first packed index, positions, cached prefix length)
        wants: list[tuple[Request, int, list[int], int]] = []
        packed = 0
        rows = []
        vision = self.model.visual is not None
        rope, image_jobs = [], []  # image_jobs: (image, its first feature row needed, packed index, how many)
        for req in batch:
            row = len(self.running)
            rows.append(row)
            self.running.append(req)
            ids, keys = req.input_ids + req.output_ids, req.cache_keys()
            input_lp = req.return_logprob and req.logprob_start_len >= 0 and not req.output_ids
            key = tuple(keys)
            if key in first_with and not input_lp:
                copies.append((first_with[key], row, len(ids)))
                req.cached_tokens = len(ids)
                continue
            limit = len(ids) - 1 if not input_lp else req.logprob_start_len
            cached, saved = self.prefix_cache.match(keys, limit)
            if cached:
                self.cache.insert(row, saved, cached)
            req.cached_tokens = cached
            segments.append(PrefillSegment(row, cached, len(ids) - cached))
            tokens.extend(ids[cached:])
            if vision:
                rope.append(req.rope_range(cached, len(ids)))
                for (start, length), image in zip(req.image_spans(), req.images):
                    first = max(start, cached)  # a cached prefix may end inside an image
                    if first < start + length:
                        image_jobs.append((image, first - start, packed + first - cached, start + length - first))
            if input_lp:
                wants.append((req, packed, list(range(req.logprob_start_len + 1, len(ids))), cached))
            first_with.setdefault(key, row)
            last_index[row] = packed + len(ids) - cached - 1
            packed += len(ids) - cached
        hidden_at = sorted(set(last_index.values()) | {
            start + p - 1 - cached for req, start, positions, cached in wants for p in positions})
        where = {p: i for i, p in enumerate(hidden_at)}
        hidden = self.model.prefill(torch.tensor(tokens), segments, self.cache, torch.tensor(hidden_at),
                                    torch.cat(rope, dim=1) if vision else None,
                                    self._image_embeds(image_jobs) if image_jobs else None)
        for src, dst, length in copies:
            self.cache.move(src, dst, length)
            last_index[dst] = last_index[src]
        logits = self.model.logits(hidden)
        for req, start, positions, cached in wants:
            self._input_logprobs(req, logits[[where[start + p - 1 - cached] for p in positions]], positions)
        self.stats["prefill_tokens"] += len(tokens)
        self.stats["cached_tokens"] += sum(r.cached_tokens for r in batch)
        todo = [(row, req) for row, req in zip(rows, batch) if req.params.max_new_tokens > 0]
        for req in batch:
            if req.params.max_new_tokens == 0:
                req.finish_reason = {"type": "length", "length": 0}
        if todo:
            self._sample_and_append([req for _, req in todo], logits[[where[last_index[row]] for row, _ in todo]])

    def _image_embeds(self, jobs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The vision tower over every image a prefill needs, once: (packed indices, their features)."""
        images = [image for image, *_ in jobs]
        features = self.model.encode_images(torch.cat([im.pixel_values for im in images]),
                                            torch.tensor([im.grid_thw for im in images]))
        per_image = features.split([im.tokens for im in images])
        index = torch.cat([torch.arange(at, at + n) for _, _, at, n in jobs])
        return index, torch.cat([f[skip:skip + n] for f, (_, skip, _, n) in zip(per_image, jobs)])

    def _input_logprobs(self, req: Request, logits: torch.Tensor, positions: list[int]) -> None:
        """Prompt log-probs from logprob_start_len on, of the raw distribution (no temperature), as SGLang reports
        them: the first entry is always None, the rest are log p(token | what precedes it)."""
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor([req.input_ids[p] for p in positions], dtype=torch.long)
        req.input_logprobs = [None] + logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
        if req.top_logprobs_num:
            top = logprobs.topk(req.top_logprobs_num, dim=-1)
            req.input_top_logprobs = [None] + [list(zip(v, i)) for v, i in zip(top.values.tolist(),
                                                                               top.indices.tolist())]

    def _decode(self) -> None:
        self.cache.ensure(max(r.length for r in self.running))
        tokens = torch.tensor([r.output_ids[-1] for r in self.running])
        positions = torch.tensor([r.length - 1 for r in self.running])
        offsets = torch.tensor([r.rope_delta for r in self.running]) if self.model.visual is not None else None
        hidden = self.model.decode(tokens, positions, self.cache, offsets)
        self._sample_and_append(list(self.running), self.model.logits(hidden))

    def _sample_and_append(self, requests: list[Request], logits: torch.Tensor) -> None:
        settings = []
        for i, req in enumerate(requests):
            p = req.params
            banned = ()
            if len(req.output_ids) < p.min_new_tokens:
                banned = tuple(sorted(set(p.stop_token_ids or ()) | (set() if p.ignore_eos else self.eos_ids)))
            s = RowSettings(p.temperature, p.top_p, p.top_k, p.min_p, p.frequency_penalty, p.presence_penalty,
                            p.repetition_penalty, req.seed, len(req.input_ids) + len(req.output_ids), banned)
            if s.penalised:
                apply_penalties(logits, i, s, torch.tensor(req.input_ids + req.output_ids),
                                torch.tensor(req.output_ids, dtype=torch.long))
            settings.append(s)
        top_n = max(r.top_logprobs_num if r.return_logprob else 0 for r in requests)
        tokens, logprobs, top = sample(logits, settings, self.generator, top_n)
        tokens, logprobs = tokens.tolist(), logprobs.tolist()
        top_lists = (top[0].tolist(), top[1].tolist()) if top is not None else None
        for i, req in enumerate(requests):
            if not math.isfinite(logprobs[i]):  # a broken distribution (non-finite logits) samples garbage
                req.finish_reason = abort_reason(f"engine error: the model's distribution for this sequence is not "
                                                 f"finite (sampled log-probability {logprobs[i]})")
                continue
            req.output_ids.append(tokens[i])
            if req.return_logprob:
                req.output_logprobs.append(logprobs[i])
                if req.top_logprobs_num:
                    n = req.top_logprobs_num
                    req.output_top_logprobs.append(list(zip(top_lists[0][i][:n], top_lists[1][i][:n])))
            self._check_finished(req)
            if req.stream and not req.finished:
                self._notify(req)
        self.stats["generated_tokens"] += len(requests)

    def _check_finished(self, req: Request) -> None:
        p, token = req.params, req.output_ids[-1]
        if len(req.output_ids) >= p.min_new_tokens:
            if (not p.ignore_eos and token in self.eos_ids) or token in (p.stop_token_ids or ()):
                req.finish_reason = {"type": "stop", "matched": token}
                return
            if p.stop:
                window = max(len(s) for s in p.stop) + 8
                tail = self.tokenizer.decode(req.output_ids[-window:], skip_special_tokens=p.skip_special_tokens)
                hit = next((s for s in p.stop if s in tail), None)
                if hit is not None:
                    req.finish_reason = {"type": "stop", "matched": hit}
                    return
        if len(req.output_ids) >= p.max_new_tokens or req.length >= self.context_length:
            req.finish_reason = {"type": "length", "length": len(req.output_ids)}

    def _retire(self) -> None:
        """Drop finished sequences; the last running row moves into each hole so running rows stay 0..n-1."""
        for row in reversed(range(len(self.running))):
            req = self.running[row]
            if not req.finished:
                continue
            self._save_prefix(req, row)
            last = len(self.running) - 1
            if row != last:
                self.cache.move(last, row, self.running[last].length)
                self.running[row] = self.running[last]
            self.running.pop()
            self._notify(req)

    def _save_prefix(self, req: Request, row: int) -> None:
        if self.prefix_cache.max_tokens and self.cache.capacity:
            keys = req.cache_keys()[:req.kv_length]
            if self.prefix_cache.min_tokens <= len(keys) <= self.prefix_cache.max_tokens:
                self.prefix_cache.put(keys, self.cache.extract(row, len(keys)))

    def _notify(self, req: Request) -> None:
        if req.finished:
            req.finished_at = time.time()
            req.weight_version = self.weight_version  # the weights that produced its last tokens
        if req.on_update is not None:
            req.on_update(req)
