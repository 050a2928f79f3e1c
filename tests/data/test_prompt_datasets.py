"""data=prompts: prompt files and folders, chat templates, the three splits, the columns that travel with each
prompt, the one-line errors, and the offline film prompt set."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from omegaconf import OmegaConf

from warp_lightning import UserError
from warp_lightning.data.prompt_datasets import (
    FILM_PROMPT,
    assign_parts,
    check_prompt_data,
    film_rows,
    film_title,
    prompt_columns,
    prompt_dataset_splits,
    render_prompts,
)
from warp_lightning.data.prompts import PromptBatches, PromptSplits, splits_for
from warp_lightning.data.texts import normalize_text

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
LOGGER = "warp_lightning.data.prompt_datasets"


@pytest.fixture(scope="module")
def chat_tokenizer(asset_cache):
    """The GPT-2 tokenizer of the assets with a chat template (its own copy: the session one stays template-free)."""
    from transformers import AutoTokenizer

    from warp_lightning.data.assets import fetch

    tok = AutoTokenizer.from_pretrained(fetch("gpt2_tokenizer", cache=asset_cache))
    tok.chat_template = TEMPLATE
    return tok


def data_cfg(path, **overrides):
    """conf/data/prompts.yaml with `path` and overrides, as `train` composes it."""
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "data" / "prompts.yaml"), {"path": str(path), **overrides})


def rows_of(n: int, start: int = 0) -> list[dict]:
    """n distinct string prompts with two extra columns derived from the row (so that a mix-up shows)."""
    return [{"prompt": f"Tell me about the number {i} in words", "answer": str(i), "weight": i / 2}
            for i in range(start, start + n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def assert_rows_consistent(split, tokenizer, column: str = "prompt"):
    """Each row's tokens are its rendered text tokenized whole (nothing cut; a plain string with the special tokens
    the tokenizer adds, none for GPT-2's), its columns those of its row."""
    for row in split:
        assert row["input_ids"] == tokenizer(row["prompt_text"])["input_ids"]
        if "answer" in row:
            assert row[column] == f"Tell me about the number {row['answer']} in words"
            assert row["weight"] == int(row["answer"]) / 2


# ---- splits ----------------------------------------------------------------------------------------------------

def test_assign_parts_by_hand():
    keys = [f"k{i}" for i in range(10)]
    parts = assign_parts(keys, [0.5, 0.2, 0.3], seed=1)
    assert [parts.count(p) for p in range(3)] == [5, 2, 3]  # round(cumulative share x 10 keys)
    assert assign_parts(keys[::-1], [0.5, 0.2, 0.3], seed=1) == parts[::-1]  # the rows' order does not matter
    assert assign_parts(keys, [0.5, 0.2, 0.3], seed=2) != parts
    repeated = assign_parts(["a", "b", "a", "c", "b", "a"], [0.34, 0.33, 0.33], seed=0)
    assert repeated[0] == repeated[2] == repeated[5] and repeated[1] == repeated[4]  # a key: one part
    assert sorted(set(repeated)) == [0, 1, 2]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_one_file_seeded_split(tmp_path, chat_tokenizer, suffix):
    rows = rows_of(60)
    path = tmp_path / f"prompts.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, rows)
    elif suffix == "csv":
        Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        Dataset.from_list(rows).to_parquet(str(path))
    train, validation, test = prompt_dataset_splits(data_cfg(path), chat_tokenizer, cache=tmp_path)
    # 60 distinct prompts: 80% train, 20% held out, a third of those (0.333) validation
    assert (len(train), len(validation), len(test)) == (48, 4, 8)
    indices = [i for s in (train, validation, test) for i in s["source_index"]]
    assert sorted(indices) == list(range(60))  # each row in exactly one split
    for split in (train, validation, test):
        assert set(split.column_names) == {"prompt", "answer", "weight", "prompt_text", "input_ids", "source_index",
                                           "prompt_messages"}
        assert split["prompt_text"] == split["prompt"]  # auto: strings as they are
        assert split["prompt_messages"] == [None] * len(split)  # strings: no messages
        assert [rows[i]["prompt"] for i in split["source_index"]] == split["prompt"]
        assert_rows_consistent(split, chat_tokenizer)


def test_seeded_split_is_the_same_for_every_run_seed_and_disjoint(tmp_path, chat_tokenizer):
    # each prompt twice: the copies fall in one split, and no prompt text is in two splits
    rows = rows_of(40) + rows_of(40)
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    a = splits_for(data_cfg(path), chat_tokenizer, seed=0, cache=tmp_path)
    b = splits_for(data_cfg(path), chat_tokenizer, seed=7, cache=tmp_path)
    assert isinstance(a, PromptSplits)
    assert all(x.to_dict() == y.to_dict() for x, y in zip(a, b, strict=True))
    keys = [{normalize_text(t) for t in s["prompt_text"]} for s in a]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert len(a.train) == 2 * len(keys[0])  # train keeps its repeats
    assert len(a.validation) == len(keys[1]) and len(a.test) == len(keys[2])  # held out: each prompt once
    assert len(a.get("test")) == len(a.test) and list(a.train["input_ids"])[0]


def test_split_by_column_keeps_groups_together(tmp_path, chat_tokenizer):
    rows = [{"prompt": f"Question {i} about topic {i % 12}", "topic": i % 12} for i in range(96)]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    splits = prompt_dataset_splits(data_cfg(path, split_by="topic", heldout_fraction=0.25, validation_fraction=0.5),
                                   chat_tokenizer, cache=tmp_path)
    topics = [set(s["topic"]) for s in splits]
    # cumulative shares 0.75, 0.875, 1 of the 12 topics: cuts at 9, round(10.5) = 10 (half to even), 12
    assert [len(t) for t in topics] == [9, 1, 2]
    assert not topics[0] & topics[1] and not topics[0] & topics[2] and not topics[1] & topics[2]
    assert [len(s) for s in splits] == [8 * len(t) for t in topics]


def test_own_splits_of_a_folder_and_duplicates_dropped(tmp_path, chat_tokenizer, caplog):
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", rows_of(20))
    # dev -> validation; two validation rows repeat train prompts, one repeats itself; one test row repeats a
    # validation prompt
    write_jsonl(folder / "dev.jsonl", rows_of(5, 100) + rows_of(2, 3) + rows_of(1, 100))
    write_jsonl(folder / "test.jsonl", rows_of(6, 200) + rows_of(1, 101))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        train, validation, test = prompt_dataset_splits(data_cfg(folder), chat_tokenizer, cache=tmp_path)
    assert train["answer"] == [str(i) for i in range(20)] and train["source_index"] == list(range(20))
    assert validation["answer"] == [str(i) for i in range(100, 105)] and validation["source_index"] == list(range(5))
    assert test["answer"] == [str(i) for i in range(200, 206)]
    assert "the dataset's own splits" in caplog.text
    assert "3 validation prompts dropped (2 equal to a prompt of an earlier split, 1 repeated)" in caplog.text
    assert "1 test prompts dropped (1 equal to a prompt of an earlier split)" in caplog.text


def test_own_test_split_divided_into_validation_and_test(tmp_path, chat_tokenizer):
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", rows_of(10))
    write_jsonl(folder / "test.jsonl", rows_of(30, 100))
    train, validation, test = prompt_dataset_splits(data_cfg(folder), chat_tokenizer, cache=tmp_path)
    assert len(train) == 10 and (len(validation), len(test)) == (10, 20)  # round(0.333 x 30) = 10
    assert sorted([*validation["source_index"], *test["source_index"]]) == list(range(30))


def test_save_to_disk_folder_and_split_mapping(tmp_path, chat_tokenizer):
    messages = [[{"role": "user", "content": f"Name a colour, {i}."}] for i in range(12)]
    DatasetDict({"main": Dataset.from_dict({"prompt": messages[:8], "id": list(range(8))}),
                 "valid": Dataset.from_dict({"prompt": messages[8:10], "id": [8, 9]}),
                 "final": Dataset.from_dict({"prompt": messages[10:], "id": [10, 11]})}).save_to_disk(tmp_path / "ds")
    cfg = data_cfg(tmp_path / "ds", splits={"train": "main", "validation": "valid", "test": "final"})
    train, validation, test = prompt_dataset_splits(cfg, chat_tokenizer, cache=tmp_path)
    assert (train["id"], validation["id"], test["id"]) == (list(range(8)), [8, 9], [10, 11])
    assert test["prompt"] == messages[10:]  # the messages travel too
    with pytest.raises(UserError, match=r"data.splits=null is invalid: the dataset's splits \(main, valid, "
                                        r"final\) include no train split"):
        prompt_dataset_splits(data_cfg(tmp_path / "ds"), chat_tokenizer, cache=tmp_path)


def test_too_long_prompts_dropped_never_cut(tmp_path, chat_tokenizer, caplog):
    rows = [{"prompt": "word " * n + "end", "n": n} for n in range(1, 61)]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    length = {r["n"]: len(chat_tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows}
    assert sum(k > 30 for k in length.values()) == 31  # n + 1 tokens
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        splits = prompt_dataset_splits(data_cfg(path, max_prompt_tokens=30), chat_tokenizer, cache=tmp_path)
    # the division is made before the length check: each split holds its part of the rows, less the long ones
    parts = assign_parts([normalize_text(r["prompt"]) for r in rows], [0.8, 0.2 * 0.333, 0.2 * 0.667])
    for k, (name, split) in enumerate(zip(("train", "validation", "test"), splits, strict=True)):
        part = [r["n"] for r, p in zip(rows, parts, strict=True) if p == k]
        assert split["n"] == [n for n in part if length[n] <= 30]
        assert_rows_consistent(split, chat_tokenizer)
        long = sum(length[n] > 30 for n in part)
        if long:
            assert f"{long} {name} prompts dropped ({long} longer than data.max_prompt_tokens=30)" in caplog.text


def test_columns_travel_to_each_step(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "prompts.jsonl", rows_of(30))
    train = prompt_dataset_splits(data_cfg(path), chat_tokenizer, cache=tmp_path)[0]
    ids = list(train["input_ids"])
    columns = prompt_columns(train)
    assert set(columns) == {"prompt", "answer", "weight", "prompt_text", "source_index", "prompt_messages"}
    plain = PromptBatches(ids, 5, 4, seed=3, pad_id=0)
    with_columns = PromptBatches(ids, 5, 4, seed=3, pad_id=0, columns=columns)
    for t in range(5):
        batch, (x, mask, cols) = plain[t], with_columns[t]
        assert len(batch) == 2 and batch[0].equal(x) and batch[1].equal(mask)  # the default stream is unchanged
        assert set(cols) == set(columns) and all(len(v) == 4 for v in cols.values())
        for row in range(4):
            tokens = x[row][mask[row].bool()].tolist()
            assert tokens == chat_tokenizer(cols["prompt"][row], add_special_tokens=False)["input_ids"]
            assert cols["prompt"][row] == f"Tell me about the number {cols['answer'][row]} in words"


# ---- chat templates ----------------------------------------------------------------------------------------------

def test_chat_template_exactly_as_apply_chat_template(tmp_path, chat_tokenizer):
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Count to {i}."}]
                     for i in range(20)] + [[{"role": "user", "content": f"Say {i}."}] for i in range(20)]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": c, "i": i} for i, c in enumerate(conversations)])
    splits = prompt_dataset_splits(data_cfg(path), chat_tokenizer, cache=tmp_path)
    assert sum(len(s) for s in splits) == 40
    for split in splits:
        for row in split:
            messages = conversations[row["i"]]
            assert row["prompt"] == messages
            assert row["prompt_text"] == chat_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                            tokenize=False)
            assert row["input_ids"] == chat_ids(chat_tokenizer, messages)  # token for token
            assert row["input_ids"][0] == chat_tokenizer.bos_token_id and row["input_ids"][1] != row["input_ids"][0]
            assert row["prompt_text"].endswith("<|assistant|>\n")
            assert row["prompt_messages"] == messages  # what a reward function gets as the prompt
        assert prompt_columns(split)["prompt_messages"] == [conversations[i] for i in split["i"]]


def test_chat_template_modes(chat_tokenizer):
    messages = [{"role": "user", "content": "Hello there."}]
    templated = chat_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert render_prompts(["Hello there.", messages], chat_tokenizer, "auto") == ["Hello there.", templated]
    assert render_prompts(["Hello there.", messages], chat_tokenizer, "always") == [templated, templated]
    assert render_prompts(["Hello there."], chat_tokenizer, "never") == ["Hello there."]
    with pytest.raises(UserError) as err:
        render_prompts(["fine", messages], chat_tokenizer, "never", "the train split")
    assert str(err.value) == ("data.chat_template=never is invalid: row 1 of the train split is a list of messages; "
                              "set data.chat_template=auto to render messages through the tokenizer's chat template")


def test_always_mode_through_a_file(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "prompts.jsonl", rows_of(20))
    for split in prompt_dataset_splits(data_cfg(path, chat_template="always"), chat_tokenizer, cache=tmp_path):
        for row in split:
            assert row["input_ids"] == chat_ids(chat_tokenizer, [{"role": "user", "content": row["prompt"]}])


@pytest.fixture(scope="module")
def bos_tokenizer(asset_cache):
    """A tokenizer that adds a BOS to a text it encodes (as Llama's and SmolLM2-style ones do), with the template
    of `chat_tokenizer` (which writes its own BOS): GPT-2's vocabulary, `add_bos_token=True`."""
    from transformers import AutoTokenizer

    from warp_lightning.data.assets import fetch

    tok = AutoTokenizer.from_pretrained(fetch("gpt2_tokenizer", cache=asset_cache), add_bos_token=True)
    tok.chat_template = TEMPLATE
    return tok


def test_plain_strings_get_the_special_tokens_the_tokenizer_adds_and_templates_no_second_bos(
        tmp_path, chat_tokenizer, bos_tokenizer):
    """As TRL tokenizes prompts: a standard (string) prompt with add_special_tokens=True, a rendered template
    without. GPT-2's tokenizer adds nothing: its ids are those of the text alone, as before."""
    strings = write_jsonl(tmp_path / "strings.jsonl", rows_of(30))
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": f"Count to {i}."}]}
                                                  for i in range(30)])
    gpt2 = prompt_dataset_splits(data_cfg(strings), chat_tokenizer, cache=tmp_path)
    bos = prompt_dataset_splits(data_cfg(strings), bos_tokenizer, cache=tmp_path)
    assert bos_tokenizer("a film")["input_ids"][0] == bos_tokenizer.bos_token_id  # it does add one
    for plain, with_bos in zip(gpt2, bos, strict=True):
        assert plain["prompt"] == with_bos["prompt"]
        for text, ids, ids_bos in zip(plain["prompt"], plain["input_ids"], with_bos["input_ids"], strict=True):
            assert ids == chat_tokenizer(text, add_special_tokens=False)["input_ids"]  # GPT-2: unchanged
            assert ids_bos == [bos_tokenizer.bos_token_id, *ids]
    for split in prompt_dataset_splits(data_cfg(chats), bos_tokenizer, cache=tmp_path):
        for row in split:
            assert row["input_ids"] == chat_ids(bos_tokenizer, row["prompt"])  # the template's one BOS
            assert row["input_ids"][1] != bos_tokenizer.bos_token_id
    always = prompt_dataset_splits(data_cfg(strings, chat_template="always"), bos_tokenizer, cache=tmp_path)[0]
    assert always["input_ids"][0] == chat_ids(bos_tokenizer, [{"role": "user", "content": always["prompt"][0]}])
    assert always["prompt_messages"] == [None] * len(always)  # a string prompt stays a string for the reward


# ---- one line for each bad input ---------------------------------------------------------------------------------

def one_line(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_inputs_one_line_each(tmp_path, chat_tokenizer, asset_cache, monkeypatch):
    load = lambda path, **kw: prompt_dataset_splits(data_cfg(path, **kw), chat_tokenizer, cache=tmp_path)  # noqa: E731
    assert one_line(lambda: load(tmp_path / "missing.jsonl")).startswith(
        f"data.path='{tmp_path / 'missing.jsonl'}' is invalid: no such file or folder")
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"question": "What?", "id": 1}])
    missing = ("data.prompt_column='prompt' is invalid: the train split has the columns question, id; name the one "
               "holding the prompts")
    assert one_line(lambda: load(path)) == missing
    assert one_line(lambda: check_prompt_data(data_cfg(path), cache=tmp_path)) == missing  # before any tokenizer
    check_prompt_data(data_cfg(path, prompt_column="question"), cache=tmp_path)
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": f"Hi {i}"}]}
                                                 for i in range(20)])
    assert one_line(lambda: load(chat, chat_template="never")).startswith(
        "data.chat_template=never is invalid: row 0 of the train split is a list of messages")
    assert one_line(lambda: load(chat, chat_template="sometimes")) == (
        "data.chat_template='sometimes' is invalid: choose auto, always, never")
    monkeypatch.setattr(chat_tokenizer, "chat_template", None)
    assert one_line(lambda: load(chat)).startswith(
        "data.chat_template=auto is invalid: the policy tokenizer has no chat template, and row 0 of the train split "
        "needs one; use an instruct policy whose tokenizer has one")
    monkeypatch.undo()
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": {"text": "hi"}}])
    assert "a prompt is a string or a list of {role, content} messages" in one_line(lambda: load(odd))
    reserved = write_jsonl(tmp_path / "reserved.jsonl", [{"prompt": "hi", "input_ids": [1]}])
    assert "its column input_ids is one the prompts add" in one_line(lambda: load(reserved))
    (tmp_path / "notes.txt").write_text("hi\n")
    assert "a .txt file; give a .jsonl, .csv or .parquet file" in one_line(lambda: load(tmp_path / "notes.txt"))
    short = write_jsonl(tmp_path / "short.jsonl", rows_of(2))
    assert one_line(lambda: load(short)).endswith(
        "the validation split holds no prompt (dropped: none in the source); give more rows, or raise "
        "data.heldout_fraction=0.2")
    assert "raise data.max_prompt_tokens=2 (templated prompts" in one_line(lambda: load(chat, max_prompt_tokens=2))


# ---- the offline film prompt set ---------------------------------------------------------------------------------

def test_film_title():
    assert film_title("about_a_boy") == "About a Boy"
    assert film_title("hard_word_the") == "The Hard Word"
    assert film_title("harry_potter_and_the_chamber_of_secrets") == "Harry Potter and the Chamber of Secrets"
    assert film_title("hemlige_riddaren_ii_%c5terkomsten_den") == "Hemlige Riddaren Ii \u00c5terkomsten Den"


def test_film_rows_by_hand():
    csv_text = ("category,text,movie_name,has_plot_and_reviews\n"
                "fresh,Great.,about_a_boy,True\nrotten,Dull.,about_a_boy,True\nfresh,Fine.,about_a_boy,True\n"
                "plot,A man meets a boy.,about_a_boy,True\nplot,Someone.,guy_thing_a,False\n")
    assert film_rows(csv_text) == [
        {"prompt": [{"role": "user", "content": "Write a one-sentence review of the film A Guy Thing."}],
         "film": "A Guy Thing", "critics": 0, "fresh_fraction": None},
        {"prompt": [{"role": "user", "content": "Write a one-sentence review of the film About a Boy."}],
         "film": "About a Boy", "critics": 3, "fresh_fraction": 2 / 3}]


def test_film_reviews_split_by_film(asset_cache, chat_tokenizer):
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "data" / "prompts.yaml"),
                          OmegaConf.load(REPO / "conf" / "data" / "film_reviews.yaml"))
    cfg.pop("defaults")
    splits = splits_for(cfg, chat_tokenizer, seed=0, cache=asset_cache)
    films = [list(s["film"]) for s in splits]
    assert all(len(f) == len(set(f)) for f in films)  # one prompt per film
    assert not set(films[0]) & set(films[1]) and not set(films[0]) & set(films[2]) and not set(films[1]) & set(films[2])
    sizes = [len(f) for f in films]
    assert sum(sizes) > 1400 and [round(n / sum(sizes), 2) for n in sizes] == [0.7, 0.1, 0.2]
    for split in splits:
        for row in split.select(range(20)):
            messages = [{"role": "user", "content": FILM_PROMPT.format(film=row["film"])}]
            assert row["prompt"] == messages and row["input_ids"] == chat_ids(chat_tokenizer, messages)
            assert row["fresh_fraction"] is None or 0 <= row["fresh_fraction"] <= 1
    assert splits_for(cfg, chat_tokenizer, seed=5, cache=asset_cache).test["film"] == films[2]  # read back the same
