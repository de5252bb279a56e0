"""The embedded engine against transformers: log-probs, greedy generation, batching, prefix reuse, sampling."""

import threading
import time

import pytest
import torch

from rlpost.rollout.engine.engine import Engine, abort_reason
from rlpost.rollout.engine.request import Request, RequestError, SamplingParams
from rlpost.rollout.engine.sampler import RowSettings, sample
from rlpost.testing.tiny_models import make_tiny_checkpoint


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def checkpoint(request, tmp_path_factory):
    overrides = {"tie_word_embeddings": True} if request.param == "llama" else {}
    return make_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param), **overrides)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return make_tiny_checkpoint("qwen2", tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def engine(qwen2):
    eng = Engine(qwen2, dtype="float32", max_running=3, prefix_cache_tokens=4096).start()
    yield eng
    eng.shutdown()


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def prompts(count, seed=0, low=4, high=30):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 500, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()
            for _ in range(count)]


def req(rid, ids, **params):
    return Request(rid, list(ids), SamplingParams(**params), return_logprob=True)


def reference_logprobs(model, ids, start):
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return logprobs[start - 1:-1].gather(1, torch.tensor(ids[start:])[:, None]).squeeze(1)


def test_logprobs_and_greedy_output_match_transformers(checkpoint):
    model = hf_model(checkpoint)
    eng = Engine(checkpoint, dtype="float32", max_running=3)  # 8 requests through 3 rows: joins and leaves
    try:
        requests = [req(f"r{i}", p, max_new_tokens=6 + 3 * i, temperature=0.0 if i % 2 else 1.0)
                    for i, p in enumerate(prompts(8))]
        eng.run(requests, timeout_s=120)
    finally:
        eng.shutdown()
    for r in requests:
        ref = reference_logprobs(model, r.input_ids + r.output_ids, len(r.input_ids))
        assert (ref - torch.tensor(r.output_logprobs)).abs().max().item() < 1e-4, r.rid
        if r.params.temperature == 0.0:
            out = model.generate(torch.tensor([r.input_ids]), max_new_tokens=r.params.max_new_tokens, do_sample=False,
                                 pad_token_id=0)
            assert out[0, len(r.input_ids):].tolist() == r.output_ids, r.rid


def test_input_logprobs_match_transformers(engine, qwen2):
    ids = prompts(1, seed=3, low=20)[0]
    r = Request("in", ids, SamplingParams(max_new_tokens=0), return_logprob=True, logprob_start_len=0,
                top_logprobs_num=2)
    engine.run([r], timeout_s=60)
    assert r.output_ids == [] and r.finish_reason == {"type": "length", "length": 0}
    assert r.input_logprobs[0] is None and len(r.input_logprobs) == len(ids)
    ref = reference_logprobs(hf_model(qwen2), ids, 1)
    assert (ref - torch.tensor(r.input_logprobs[1:])).abs().max().item() < 1e-4
    assert all(row[0][0] >= value for row, value in zip(r.input_top_logprobs[1:], r.input_logprobs[1:]))
    later = engine.run([Request("in5", ids, SamplingParams(max_new_tokens=0), return_logprob=True,
                                logprob_start_len=5)])[0]
    assert later.input_logprobs[0] is None and len(later.input_logprobs) == len(ids) - 5  # SGLang: null first
    assert (ref[5:] - torch.tensor(later.input_logprobs[1:])).abs().max().item() < 1e-4


def test_rows_moving_between_steps_do_not_change_outputs(engine):
    """Each greedy output equals the same request run alone, whatever joined or left around it."""
    ps = prompts(7, seed=5)
    alone = [engine.run([req(f"a{i}", p, max_new_tokens=3 + 4 * (i % 3), temperature=0.0)])[0].output_ids
             for i, p in enumerate(ps)]
    together = engine.run([req(f"b{i}", p, max_new_tokens=3 + 4 * (i % 3), temperature=0.0)
                           for i, p in enumerate(ps)])
    assert [r.output_ids for r in together] == alone


def test_next_turn_reuses_the_previous_turns_keys_and_values(engine, qwen2):
    first = engine.run([req("t1", prompts(1, seed=7, low=25)[0], max_new_tokens=12, temperature=0.0)])[0]
    history = first.input_ids + first.output_ids + [11, 12, 13]
    second = engine.run([req("t2", history, max_new_tokens=6, temperature=0.0)])[0]
    assert second.cached_tokens == len(first.input_ids) + len(first.output_ids) - 1
    ref = reference_logprobs(hf_model(qwen2), second.input_ids + second.output_ids, len(second.input_ids))
    assert (ref - torch.tensor(second.output_logprobs)).abs().max().item() < 1e-4


def test_identical_prompts_are_prefilled_once(engine):
    ids = prompts(1, seed=9, low=20)[0]
    engine.call(lambda: (engine.prefix_cache.clear(), engine.pause("in_place"))).result()
    before = engine.stats["prefill_tokens"]
    rs = [req(f"n{i}", ids, max_new_tokens=4) for i in range(3)]
    for r in rs:  # all three arrive before the next step
        engine.submit(r)
    engine.call(engine.resume_generation).result()
    while not all(r.finished_at for r in rs):
        time.sleep(0.01)
    assert engine.stats["prefill_tokens"] - before == len(ids)
    assert [r.cached_tokens for r in rs] == [0, len(ids), len(ids)]


def test_seeded_sampling_does_not_depend_on_the_batch(engine):
    ids = prompts(1, seed=11)[0]

    def seeded(rid):
        return Request(rid, ids, SamplingParams(max_new_tokens=10), seed=42)

    alone = engine.run([seeded("s0")])[0].output_ids
    crowd = engine.run([req("x", p, max_new_tokens=10) for p in prompts(2, seed=12)] + [seeded("s1")])
    assert crowd[-1].output_ids == alone


def test_seeded_draws_are_keyed_by_position_as_in_sglang(engine):
    """SGLang's seeded sampler hashes (seed, position): a request that resumes a seeded sequence from its first k
    tokens with the same seed samples exactly the rest of it, where a per-request random stream would replay its
    first draws at the new positions (the turns of a multi-turn sample share one seed)."""
    ids = prompts(1, seed=14)[0]
    full = engine.run([Request("a", ids, SamplingParams(max_new_tokens=12, ignore_eos=True), seed=5)])[0].output_ids
    rest = engine.run([Request("b", ids + full[:4], SamplingParams(max_new_tokens=8, ignore_eos=True),
                               seed=5)])[0].output_ids
    other = engine.run([Request("c", ids, SamplingParams(max_new_tokens=12, ignore_eos=True), seed=6)])[0].output_ids
    assert rest == full[4:] and other != full


@pytest.mark.parametrize("params", [{"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}, {"temperature": 1e-7}])
def test_filters_that_keep_one_token_are_greedy(engine, params):
    ids = prompts(1, seed=13)[0]
    greedy = engine.run([req("g", ids, max_new_tokens=8, temperature=0.0)])[0].output_ids
    assert engine.run([req("f", ids, max_new_tokens=8, **params)])[0].output_ids == greedy


def test_stop_token_ids_stop_strings_and_min_new_tokens(engine):
    ids = prompts(1, seed=17)[0]
    greedy = engine.run([req("g", ids, max_new_tokens=12, temperature=0.0, ignore_eos=True)])[0]
    stop_id = greedy.output_ids[4]
    cut = greedy.output_ids.index(stop_id) + 1
    by_id = engine.run([req("i", ids, max_new_tokens=12, temperature=0.0, stop_token_ids=[stop_id])])[0]
    assert by_id.output_ids == greedy.output_ids[:cut]
    assert by_id.finish_reason == {"type": "stop", "matched": stop_id}
    forced = engine.run([req("m", ids, max_new_tokens=12, temperature=0.0, stop_token_ids=[stop_id],
                             min_new_tokens=cut + 1)])[0]
    assert stop_id not in forced.output_ids[:cut + 1] and len(forced.output_ids) >= cut + 1
    text = engine.tokenizer.decode(greedy.output_ids[:6])
    stop = text[-3:] if text[-3:].strip() else text[-4:]
    by_text = engine.run([req("s", ids, max_new_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop])])[0]
    assert by_text.finish_reason == {"type": "stop", "matched": stop}
    assert stop in engine.tokenizer.decode(by_text.output_ids) and len(by_text.output_ids) <= 6
    assert greedy.finish_reason == {"type": "length", "length": 12}


def test_weight_update_changes_outputs_to_the_new_models(engine, qwen2, tmp_path):
    from rlpost.models.safetensors_dir import SafetensorsDir

    other = make_tiny_checkpoint("qwen2", tmp_path / "other", seed=1)
    ids = prompts(1, seed=19)[0]
    before = engine.run([req("w0", ids, max_new_tokens=8, temperature=0.0)])[0].output_ids
    reader = SafetensorsDir(other)
    try:
        count = engine.call(lambda: engine.load_weights((n, reader.get(n)) for n in reader.files)).result()
        assert count == len(reader.files)
        after = engine.run([req("w1", ids, max_new_tokens=8, temperature=0.0)])[0].output_ids
        expected = hf_model(other).generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert after == expected[0, len(ids):].tolist() != before
    finally:
        back = SafetensorsDir(qwen2)
        engine.call(lambda: engine.load_weights((n, back.get(n)) for n in back.files)).result()
    with pytest.raises(KeyError, match="unknown weight 'model.layers.0.mlp.gate.weight'"):
        engine.call(lambda: engine.load_weights([("model.layers.0.mlp.gate.weight", torch.zeros(1))])).result()
    with pytest.raises(ValueError, match=r"has shape \(3,\), expected \(64,\)"):
        engine.call(lambda: engine.load_weights([("model.norm.weight", torch.zeros(3))])).result()


def test_retracted_requests_resume_where_they_stopped(engine):
    ids = prompts(1, seed=23)[0]
    expected = engine.run([req("a", ids, max_new_tokens=30, temperature=0.0, ignore_eos=True)])[0].output_ids
    r = req("b", ids, max_new_tokens=30, temperature=0.0, ignore_eos=True)
    retracted, finished = threading.Event(), threading.Event()

    def on_update(x):  # runs on the engine thread: the queued pause happens before the next step
        if len(x.output_ids) == 5:
            engine.call(lambda: (engine.pause("retract"), retracted.set()))
        if x.finished:
            finished.set()

    r.stream, r.on_update = True, on_update
    engine.submit(r)
    assert retracted.wait(30)
    assert r in engine.waiting and len(r.output_ids) == 5 and not r.finished
    engine.call(engine.resume_generation).result()
    assert finished.wait(60) and r.output_ids == expected


def test_abort_finishes_waiting_and_running_requests(engine):
    engine.call(lambda: engine.pause("in_place")).result()
    rs = [req(f"ab{i}", p, max_new_tokens=50) for i, p in enumerate(prompts(2, seed=29))]
    for r in rs:
        engine.submit(r)
    assert engine.call(lambda: engine.abort("ab1")).result() == 1
    assert rs[1].finish_reason == abort_reason("Aborted") and not rs[0].finished
    assert engine.call(lambda: engine.abort(None, "stop all")).result() == 1
    assert rs[0].finish_reason == {"type": "abort", "message": "stop all", "status_code": None, "err_type": None}
    engine.call(engine.resume_generation).result()
    assert not engine.waiting and not engine.running


def test_bad_requests_are_refused_with_the_reason(engine):
    with pytest.raises(RequestError, match="unknown field 'temprature'.*did you mean 'temperature'"):
        SamplingParams.from_json({"temprature": 0.5})
    with pytest.raises(RequestError, match="top_p must be in"):
        SamplingParams.from_json({"top_p": 0})
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.submit(req("v", [1, 10 ** 6]))
    with pytest.raises(RequestError, match="prompt is empty"):
        engine.submit(req("e", []))
    with pytest.raises(RequestError, match="context length"):
        engine.submit(req("c", [1] * 600))
    with pytest.raises(RequestError, match="stop_token_ids: 9999 is outside the vocabulary"):
        engine.submit(req("s", [1, 2], stop_token_ids=[9999]))
    with pytest.raises(RequestError, match="top_logprobs_num must be in"):
        engine.submit(Request("t", [1, 2], SamplingParams(), return_logprob=True, top_logprobs_num=-1))


def test_sampler_draws_from_the_truncated_distribution():
    """Frequencies of 40k draws match the filtered, renormalised probabilities within 4 standard errors."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0])
    cases = [
        (RowSettings(1.0, 1.0, -1, 0.0), torch.softmax(logits, 0)),
        (RowSettings(0.5, 1.0, -1, 0.0), torch.softmax(logits / 0.5, 0)),
        (RowSettings(1.0, 1.0, 3, 0.0), None),
        (RowSettings(1.0, 0.7, -1, 0.0), None),
        (RowSettings(1.0, 1.0, -1, 0.3), None),
    ]
    p = torch.softmax(logits, 0)
    cases[2] = (cases[2][0], torch.where(torch.arange(7) < 3, p, 0.0))
    keep_p = (p.cumsum(0) - p) <= 0.7  # smallest prefix reaching 0.7
    cases[3] = (cases[3][0], torch.where(keep_p, p, 0.0))
    cases[4] = (cases[4][0], torch.where(p >= 0.3 * p.max(), p, 0.0))
    n = 40_000
    g = torch.Generator().manual_seed(0)
    for settings, expected in cases:
        expected = expected / expected.sum()
        tokens, chosen, _ = sample(logits.repeat(n, 1), [settings] * n, g)
        freq = torch.bincount(tokens, minlength=7).float() / n
        tolerance = 4 * (expected * (1 - expected) / n).sqrt() + 1e-9
        assert ((freq - expected).abs() <= tolerance).all(), (settings, freq, expected)
        scaled = torch.log_softmax(logits / settings.temperature, 0)
        assert torch.allclose(chosen, scaled[tokens])


def test_colocated_cycle_retract_release_reload_continue(engine, qwen2):
    """The hybrid-engine step: pause (retract), free memory for training, take it back, load weights, continue."""
    from rlpost.models.safetensors_dir import SafetensorsDir

    ids = prompts(1, seed=31)[0]
    expected = engine.run([req("whole", ids, max_new_tokens=20, temperature=0.0, ignore_eos=True)])[0].output_ids
    r = req("cycle", ids, max_new_tokens=20, temperature=0.0, ignore_eos=True)
    finished, cycled = threading.Event(), threading.Event()
    reader = SafetensorsDir(qwen2)

    def cycle():
        engine.pause("retract")
        assert r in engine.waiting and len(r.output_ids) == 3
        engine.release_memory(None)
        assert engine.cache.capacity == 0 and engine.model.embed.untyped_storage().size() == 0
        engine.resume_memory(None)
        engine.load_weights((n, reader.get(n)) for n in reader.files)
        engine.resume_generation()
        cycled.set()

    def on_update(x):
        if len(x.output_ids) == 3:
            engine.call(cycle)
        if x.finished:
            finished.set()

    r.stream, r.on_update = True, on_update
    engine.submit(r)
    assert finished.wait(60) and cycled.is_set() and r.output_ids == expected
