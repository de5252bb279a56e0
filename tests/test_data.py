import json

import pyarrow.parquet as pq
import pytest
import torch

from rlpost.cli import main
from rlpost.data.collate import collate
from rlpost.data.dataset import RLDataset
from rlpost.data.io import read_rows, write_rows
from rlpost.data.preprocess import gsm8k
from rlpost.data.sampler import BatchSampler, total_steps
from rlpost.data.schema import RowError, validate_row
from rlpost.rewards.gsm8k import same_number

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A book costs $1,200 and a pen $300. What do both cost?",
     "answer": "1200 + 300 = 1500\n#### 1,500"},
]


def row(**change):
    r = {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "1+1?"}], "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "2"}, "extra_info": {"index": 0}}
    r.update(change)
    return r


@pytest.fixture
def gsm8k_jsonl(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    return path


def test_preprocess_cli_roundtrip_through_dataset(tmp_path, gsm8k_jsonl, tokenizer):
    out = tmp_path / "train.parquet"
    assert main(["preprocess", "gsm8k", "--input", str(gsm8k_jsonl), "--output", str(out), "--multiturn"]) == 0
    rows = read_rows(out)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["7", "1500"]
    assert rows[1]["extra_info"]["tools_kwargs"] == {"calc_gsm8k_reward": {"create_kwargs": {"ground_truth": "1500"}}}
    assert rows[0]["extra_info"]["interaction_kwargs"]["query"] == GSM8K_ROWS[0]["question"]
    assert [m["role"] for m in rows[0]["prompt"]] == ["system", "user"]
    ds = RLDataset([out], tokenizer, max_prompt_length=4096)
    assert len(ds) == 2 and ds.n_filtered == 0
    for sample, r in zip(ds.samples, rows):
        assert sample.messages == r["prompt"] and sample.ground_truth == r["reward_model"]["ground_truth"]
        assert sample.extra_info == r["extra_info"] and sample.data_source == "openai/gsm8k"
        text = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        assert sample.prompt_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ds[0].tools_kwargs["calc_gsm8k_reward"]["create_kwargs"]["ground_truth"] == "7"


def test_preprocess_default_sets_are_seeded(tmp_path):
    train, test = gsm8k.build_default(tmp_path / "a", train_size=20, seed=5)
    assert pq.read_table(train).num_rows == 20
    assert pq.read_table(test).num_rows == 1319  # the real GSM8K test split
    again, _ = gsm8k.build_default(tmp_path / "b", train_size=20, seed=5)
    other, _ = gsm8k.build_default(tmp_path / "c", train_size=20, seed=6)
    assert read_rows(train) == read_rows(again) and read_rows(train) != read_rows(other)
    first = read_rows(train)[0]
    assert first["data_source"] == gsm8k.SYMBOLIC_SOURCE
    assert same_number(gsm8k.final_answer(first["extra_info"]["answer"]), first["reward_model"]["ground_truth"])


def test_generated_reference_solutions_score_full_marks():
    """GSM-Symbolic's worked solutions may end "#### 8.0" for the answer 8; the reward compares strings (as
    verl's), so the rows' solutions are written with the ground truth's form."""
    from rlpost.rewards.gsm8k import compute_score

    problems = gsm8k.symbolic_problems(400, seed=0)
    assert all(compute_score(solution, answer) == 1.0 for _, solution, answer in problems)


def test_preprocess_reports_bad_input_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GSM8K_ROWS[0]) + "\n" + json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl row 1: field 'answer' answer does not end with a '#### <number>'"):
        gsm8k.convert_file(bad, tmp_path / "o.parquet", "train")
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="row 0: expected string fields 'question' and 'answer'"):
        gsm8k.convert_file(bad, tmp_path / "o.parquet", "train")
    bad.write_text('{"question": "q", \n')
    with pytest.raises(ValueError, match="bad.jsonl line 1: not valid JSON"):
        read_rows(bad)


@pytest.mark.parametrize("change,field,message", [
    ({"data_source": ""}, "data_source", "non-empty string"),
    ({"prompt": []}, "prompt", "non-empty list"),
    ({"prompt": [{"role": "usr", "content": "x"}]}, "prompt[0].role", "must be one of system, user"),
    ({"prompt": [{"role": "user", "content": 3}]}, "prompt[0].content", "string or a list"),
    ({"reward_model": {"style": "rule"}}, "reward_model.ground_truth", "is missing"),
    ({"reward_model": "2"}, "reward_model", "must be a mapping"),
    ({"extra_info": {"tools_kwargs": {"t": {"create": {}}}}}, "extra_info.tools_kwargs.t.create", "is not one of"),
    ({"extra_info": {"tools_kwargs": {"t": {"create_kwargs": 5}}}}, "extra_info.tools_kwargs.t.create_kwargs",
     "mapping"),
    ({"images": [{"size": 3}]}, "images[0]", "'bytes' or 'path'"),
])
def test_row_validation_names_file_row_and_field(change, field, message):
    with pytest.raises(RowError, match=message) as e:
        validate_row(row(**change), "data/x.parquet", 17)
    assert str(e.value).startswith(f"data/x.parquet row 17: field '{field}'")


def test_dataset_reports_bad_row_in_file(tmp_path, tokenizer):
    path = write_rows([row(), row(), row(prompt=[{"role": "bot", "content": "x"}])], tmp_path / "d.jsonl")
    with pytest.raises(RowError, match=r"d.jsonl row 2: field 'prompt\[0\].role'"):
        RLDataset([path], tokenizer, max_prompt_length=100)


def test_parquet_keeps_a_column_the_first_row_lacks(tmp_path):
    rows = [{"a": 1}, {"a": 2, "b": {"x": "kept"}}]
    assert read_rows(write_rows(rows, tmp_path / "r.parquet")) == [{"a": 1, "b": None}, rows[1]]


def test_parquet_null_artefacts_in_kwargs_are_removed(tmp_path):
    rows = [row(extra_info={"tools_kwargs": {"a": {"create_kwargs": {"x": 1}}}}),
            row(extra_info={"tools_kwargs": {"b": {"execute_kwargs": {"y": 2}}}})]
    back = read_rows(write_rows(rows, tmp_path / "k.parquet"))
    assert back[0]["extra_info"]["tools_kwargs"]["b"] is None  # what parquet hands back
    checked = [validate_row(r, "k", i) for i, r in enumerate(back)]
    assert checked[0]["extra_info"]["tools_kwargs"] == {"a": {"create_kwargs": {"x": 1}}}
    assert checked[1]["extra_info"]["tools_kwargs"] == {"b": {"execute_kwargs": {"y": 2}}}


def test_overlong_prompts_filtered_counted_or_truncated(tmp_path, tokenizer, caplog):
    long = row(prompt=[{"role": "user", "content": "How many apples are there in total? " * 20}])
    path = write_rows([row(), long, row()], tmp_path / "p.parquet")
    short_len = len(RLDataset([path], tokenizer, max_prompt_length=10_000)[0].prompt_ids)
    ds = RLDataset([path], tokenizer, max_prompt_length=50)
    assert len(ds) == 2 and ds.n_filtered == 1
    assert "filtered 1 of 3 prompts longer than 50 tokens" in caplog.text
    assert [s.uid for s in ds] == [f"{path}:0", f"{path}:2"]
    too_long = r"p.parquet row 1: field 'prompt' renders to \d+ tokens, more than data.max_prompt_length = 50"
    with pytest.raises(RowError, match=too_long):
        RLDataset([path], tokenizer, max_prompt_length=50, filter_overlong=False, truncation="error")
    full = RLDataset([path], tokenizer, max_prompt_length=10_000)[1].prompt_ids
    left = RLDataset([path], tokenizer, max_prompt_length=50, filter_overlong=False, truncation="left")[1].prompt_ids
    right = RLDataset([path], tokenizer, max_prompt_length=50, filter_overlong=False, truncation="right")[1].prompt_ids
    middle = RLDataset([path], tokenizer, max_prompt_length=51, filter_overlong=False,
                       truncation="middle")[1].prompt_ids
    assert left == full[-50:] and right == full[:50] and short_len < 50
    assert middle == full[:25] + full[-26:]  # verl's: the first half and the last, the longer half at the end
    with pytest.raises(ValueError, match="no prompts left"):
        RLDataset([path], tokenizer, max_prompt_length=2)


def test_unsupported_or_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unsupported data file type '.csv'"):
        read_rows(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rows(tmp_path / "x.parquet")


def test_sampler_is_seeded_and_covers_epochs():
    s = BatchSampler(10, 3, shuffle=True, seed=4)
    assert s.steps_per_epoch == 3
    epoch0 = [next(s) for _ in range(3)]
    flat = [i for b in epoch0 for i in b]
    assert len(set(flat)) == 9 and all(len(b) == 3 for b in epoch0)
    epoch1 = [next(s) for _ in range(3)]
    assert s.epoch == 1 and epoch1 != epoch0
    again = BatchSampler(10, 3, shuffle=True, seed=4)
    assert [next(again) for _ in range(6)] == epoch0 + epoch1
    assert BatchSampler(4, 2, shuffle=False).epoch_batches() == [[0, 1], [2, 3]]
    assert [len(b) for b in BatchSampler(5, 2, shuffle=False, drop_last=False).epoch_batches()] == [2, 2, 1]


def test_sampler_resumes_exactly():
    full = BatchSampler(50, 8, seed=1)
    reference = [next(full) for _ in range(14)]
    first = BatchSampler(50, 8, seed=1)
    head = [next(first) for _ in range(8)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = BatchSampler(50, 8, seed=1)
    resumed.load_state_dict(state)
    assert head + [next(resumed) for _ in range(6)] == reference
    with pytest.raises(ValueError, match="sampler state has batch_size=8, this run has batch_size=4"):
        BatchSampler(50, 4, seed=1).load_state_dict(state)


def test_sampler_never_yields_zero_steps():
    with pytest.raises(ValueError, match="the dataset has 5 prompts, fewer than the batch size 8"):
        BatchSampler(5, 8)
    assert total_steps(10, 3, None) == 30 and total_steps(10, 3, 7) == 7


def test_collate_left_pads(tmp_path, tokenizer):
    path = write_rows([row(), row(prompt=[{"role": "user", "content": "a much longer question about apples"}])],
                      tmp_path / "c.jsonl")
    ds = RLDataset([path], tokenizer, max_prompt_length=500)
    batch = collate([ds[0], ds[1]], tokenizer.pad_token_id)
    n0, n1 = len(ds[0].prompt_ids), len(ds[1].prompt_ids)
    assert batch["prompt_ids"].shape == (2, n1) and n0 < n1
    assert batch["prompt_ids"][0, n1 - n0:].tolist() == ds[0].prompt_ids
    assert batch["prompt_mask"][0].tolist() == [0] * (n1 - n0) + [1] * n0
    assert torch.all(batch["prompt_ids"][0, : n1 - n0] == tokenizer.pad_token_id)
    assert batch["ground_truth"] == ["2", "2"] and batch["uid"] == [f"{path}:0", f"{path}:1"]


def test_arithmetic_held_out_problems_never_appear_in_training(tmp_path):
    from rlpost.data.io import read_rows
    from rlpost.data.preprocess import arithmetic

    train, test = arithmetic.build_default(tmp_path, train_size=300, test_size=200, seed=3)
    train_rows, test_rows = list(read_rows(train)), list(read_rows(test))
    questions = [{r["extra_info"]["question"] for r in rows} for rows in (train_rows, test_rows)]
    assert (len(train_rows), len(test_rows)) == (300, 200) and [len(q) for q in questions] == [300, 200]
    assert not questions[0] & questions[1] and all(arithmetic.held_out(q) for q in questions[1])
    row = test_rows[0]
    assert row["data_source"] == "reasoning_gym/chain_sum" and row["prompt"][0]["content"].endswith("=")
    again, _ = arithmetic.build_default(tmp_path / "again", train_size=300, test_size=200, seed=3)
    assert list(read_rows(again)) == train_rows


def test_verl_rows_name_their_agent_loop(tmp_path, tokenizer):
    """verl chooses a row's agent loop by its agent_name; a row asking for the loop this run does not use fails at
    start-up, naming it, and an unknown loop is refused when read."""
    path = write_rows([row(), row(agent_name="tool_agent")], tmp_path / "p.parquet")
    data = RLDataset([path], tokenizer, max_prompt_length=512)
    data.check_agent_loop(multi_turn=True)
    with pytest.raises(RowError, match=r"p.parquet row 1: field 'agent_name' asks for 'tool_agent', but this run's "
                                       r"rollouts are single_turn_agent \(rollout.multi_turn.enable=false\); set "
                                       r"rollout.multi_turn.enable=true"):
        data.check_agent_loop(multi_turn=False)
    bad = write_rows([row(agent_name="react_agent")], tmp_path / "bad.parquet")
    with pytest.raises(RowError, match=r"bad.parquet row 0: field 'agent_name' is 'react_agent'; rlpost's agent "
                                       r"loops are single_turn_agent, tool_agent"):
        RLDataset([bad], tokenizer, max_prompt_length=512)
