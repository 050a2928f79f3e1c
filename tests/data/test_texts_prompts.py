"""Text sets, splits, de-duplication, prompts and preference pairs on the real offline data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from datasets import Dataset

from warp_lightning import UserError
from warp_lightning.data.prompts import (
    SPLIT_NAMES,
    make_prompts,
    prompt_splits,
    split_sentences,
    splits_for,
    words,
)
from warp_lightning.data.texts import load_texts, normalize_text, preference_pairs, read_polarity_csv

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "total", "test"), [("reviews", 1500, 300), ("sentences", 4000, 800)])
def test_pang_lee_sizes_and_labels(asset_cache, name, total, test):
    full = load_texts(name, cache=asset_cache)
    assert len(full) == total and sum(full["label"]) == total // 2
    assert set(full["label"]) == {0, 1}
    assert all(t == t.strip() and t for t in full["text"])
    test_set = load_texts(name, "test", cache=asset_cache)
    assert len(test_set) == test and sum(test_set["label"]) == test // 2  # stratified


@pytest.mark.parametrize("name", ["reviews", "sentences", "rt_snippets"])
def test_splits_deterministic_and_disjoint(asset_cache, name):
    train, test = load_texts(name, "train", cache=asset_cache), load_texts(name, "test", cache=asset_cache)
    assert train.to_dict() == load_texts(name, "train", cache=asset_cache).to_dict()
    assert test.to_dict() == load_texts(name, "test", cache=asset_cache).to_dict()
    assert not {normalize_text(t) for t in train["text"]} & {normalize_text(t) for t in test["text"]}
    assert len(train) + len(test) == len(load_texts(name, cache=asset_cache))


def test_rt_snippets_clean_and_deduplicated(asset_cache):
    rt = load_texts("rt_snippets", cache=asset_cache)
    # 7,403 fresh + 5,405 rotten, minus the ~4,000 also in `sentences` and repeats; no plot synopses
    assert 8000 < len(rt) < 12808
    assert set(rt["label"]) == {0, 1}
    keys = [normalize_text(t) for t in rt["text"]]
    assert len(set(keys)) == len(keys)
    sentences = {normalize_text(t) for t in load_texts("sentences", cache=asset_cache)["text"]}
    assert not sentences & set(keys)
    assert not any("&amp;" in t for t in rt["text"])
    # plot synopses are long third-person summaries; none survive (the longest snippet is short)
    assert max(len(t) for t in rt["text"]) < 400


def test_normalize_text_matches_tokenised_sentences():
    assert normalize_text("While it's alarmingly current.") == normalize_text("while it's alarmingly current . \n")
    assert normalize_text("Lovely &amp; Amazing") == normalize_text("lovely & amazing")


def test_unknown_set_and_split(asset_cache):
    with pytest.raises(UserError, match="unknown text set"):
        load_texts("nope")
    with pytest.raises(ValueError, match="split"):
        load_texts("reviews", "validation", cache=asset_cache)


def test_bad_rows_in_polarity_csv(tmp_path, caplog):
    raw = ('\ufeff"1","a fine film , with\nseveral lines . "\n'
           '"-1","   "\n'
           '"-1",""\n'
           '"0","unknown label"\n'
           '"1"\n'
           '"-1","bad bytes here"\n').encode()
    raw = raw.replace(b"bad bytes", b"bad \xff\xfe bytes")
    path = tmp_path / "reviews.csv"
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="warp_lightning.data.texts"):
        texts, labels = read_polarity_csv(path)
    assert texts == ["a fine film , with\nseveral lines .", "bad \ufffd\ufffd bytes here"]
    assert labels == [1, 0]
    assert "4 rows skipped" in caplog.text and "undecodable" in caplog.text


def test_prompt_lengths_and_determinism(asset_cache, gpt2_tokenizer):
    texts = load_texts("reviews", "test", cache=asset_cache)
    a = make_prompts(texts, gpt2_tokenizer, 5, 20, seed=0)
    assert len(a) == len(texts)
    lengths = [len(ids) for ids in a["input_ids"]]
    assert min(lengths) >= 5 and max(lengths) <= 20 and len(set(lengths)) > 10
    assert a.to_dict() == make_prompts(texts, gpt2_tokenizer, 5, 20, seed=0).to_dict()
    assert a["input_ids"] != make_prompts(texts, gpt2_tokenizer, 5, 20, seed=1)["input_ids"]
    for row in a.select(range(20)):
        source = texts[row["source_index"]]
        full = gpt2_tokenizer(source["text"], add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == full[: len(row["input_ids"])]  # a true prefix of the whole review
        assert row["prompt"] == gpt2_tokenizer.decode(row["input_ids"])
        assert source["text"].startswith(row["prompt"])
        assert row["label"] == source["label"]


def test_make_prompts_argument_checks(gpt2_tokenizer):
    tiny = Dataset.from_dict({"text": ["one two three"], "label": [1]})
    with pytest.raises(UserError, match=r"^data.min_prompt_tokens=0 is invalid: must be between 1 and "
                                        r"data.max_prompt_tokens=5$"):
        make_prompts(tiny, gpt2_tokenizer, 0, 5)
    with pytest.raises(UserError, match=r"^data.min_prompt_tokens=6 is invalid: must be between 1"):
        make_prompts(tiny, gpt2_tokenizer, 6, 5)


def test_make_prompts_skips_empty_and_short_texts(gpt2_tokenizer, caplog):
    long = "this film is a long and winding road that never quite arrives anywhere at all " * 20
    tiny = Dataset.from_dict({"text": ["", "   \n\t", "too short", long, "exactly five tokens here ok", "x" * 5000],
                              "label": [0, 1, 0, 1, 0, 1]})
    with caplog.at_level(logging.WARNING, logger="warp_lightning.data.texts"):
        prompts = make_prompts(tiny, gpt2_tokenizer, 5, 8, seed=3)
    assert prompts["source_index"] == [3, 4, 5]
    assert "3 of 6 texts skipped (2 empty, 1 with fewer than 5 tokens)" in caplog.text
    assert all(5 <= len(ids) <= 8 for ids in prompts["input_ids"])
    assert prompts["label"] == [1, 0, 1]


def _corpus(names, split_of, cache) -> list[str]:
    return [t for name in names for t in load_texts(name, split_of(name), cache=cache)["text"]]


def test_prompt_splits_are_disjoint_from_each_other_and_from_what_the_models_trained_on(asset_cache, gpt2_tokenizer):
    """train / validation / test prompts (conf/data/reviews.yaml) are pairwise disjoint, come from different
    reviews, and no held-out prompt's sentence shares 8 consecutive words with a text of the SFT corpus
    (conf/sft.yaml `corpus`, the splits `sft` reads), of the reward model's data (conf/reward_model/minilm_rt.yaml
    `train_data`, both splits: train and validation) or with a train review (RL's prompts)."""
    from itertools import combinations

    from omegaconf import OmegaConf

    data = OmegaConf.load(REPO / "conf" / "data" / "reviews.yaml")
    splits = splits_for(data, gpt2_tokenizer, seed=0, cache=asset_cache)
    assert len(splits.train) == 1200 and len(splits.validation) >= 600 and len(splits.test) >= 1000
    keys = {name: [normalize_text(p) for p in splits.get(name)["prompt"]] for name in SPLIT_NAMES}
    for name in ("validation", "test"):
        assert len(set(keys[name])) == len(keys[name])  # distinct prompts
    for a, b in combinations(SPLIT_NAMES, 2):
        assert not set(keys[a]) & set(keys[b]), (a, b)
    for seed in (1, 2):  # nor equal to the train prompts of another seed (other prompt lengths)
        other = {normalize_text(p) for p in splits_for(data, gpt2_tokenizer, seed, asset_cache).train["prompt"]}
        assert not other & (set(keys["validation"]) | set(keys["test"]))

    train_texts = load_texts("reviews", "train", cache=asset_cache)["text"]
    held = load_texts("reviews", "test", cache=asset_cache)["text"]
    sources = {name: {held[i] for i in splits.get(name)["source_index"]} for name in ("validation", "test")}
    assert not sources["validation"] & sources["test"]
    assert len(sources["validation"]) == 100 and len(sources["test"]) == 200
    assert not {normalize_text(t) for t in train_texts} & {normalize_text(t) for t in held}

    sentences = []
    for name in ("validation", "test"):
        for row in splits.get(name):
            sentence = split_sentences(held[row["source_index"]])[row["sentence_index"]]
            assert sentence.startswith(row["prompt"]) and 5 <= len(row["input_ids"]) <= 20
            sentences.append(tuple(words(sentence)))

    sft = OmegaConf.load(REPO / "conf" / "sft.yaml").sft.corpus
    reward_data = OmegaConf.load(REPO / "conf" / "reward_model" / "minilm_rt.yaml").train_data
    seen = (_corpus(sft, lambda n: "train" if n in ("reviews", "rt_snippets") else None, asset_cache)  # as `sft`
            + _corpus([reward_data], lambda n: None, asset_cache) + list(train_texts))
    held_grams = {s[i : i + 8] for s in sentences for i in range(len(s) - 7)}
    shared, short = set(), {s for s in sentences if len(s) < 8}
    for text in seen:
        w = tuple(words(text))
        shared |= {w[i : i + 8] for i in range(len(w) - 7)} & held_grams
        shared |= {tuple(words(x)) for x in split_sentences(text)} & short
    assert not shared, sorted(shared)[:5]


def test_heldout_prompt_options_are_checked(asset_cache, gpt2_tokenizer):
    with pytest.raises(UserError, match="heldout_prompts"):
        prompt_splits("reviews", gpt2_tokenizer, 5, 20, 0, cache=asset_cache, heldout="middle")
    with pytest.raises(UserError, match="validation_fraction"):
        prompt_splits("reviews", gpt2_tokenizer, 5, 20, 0, cache=asset_cache, validation_fraction=1.0)
    with pytest.raises(UserError, match="eval.split"):
        prompt_splits("reviews", gpt2_tokenizer, 5, 20, 0, cache=asset_cache).get("dev")


def test_an_empty_split_is_named_when_asked_for(tmp_path, gpt2_tokenizer):
    texts = tmp_path / "few.txt"
    texts.write_text("\n".join(f"text number {i} is long enough to give a prompt of five tokens" for i in range(5)))
    splits = prompt_splits("file", gpt2_tokenizer, 5, 20, 0, path=texts)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (4, 0, 1)
    assert len(splits.get("test")) == 1
    with pytest.raises(UserError, match="the validation split holds no prompt"):
        splits.get("validation")


def test_first_token_held_out_prompts_split_the_held_out_reviews(asset_cache, gpt2_tokenizer):
    splits = prompt_splits("reviews", gpt2_tokenizer, 5, 20, seed=0, cache=asset_cache)
    held = load_texts("reviews", "test", cache=asset_cache)["text"]
    assert len(splits.validation) + len(splits.test) <= 300
    assert not set(splits.validation["source_index"]) & set(splits.test["source_index"])
    assert all(held[i].startswith(p) for i, p in zip(splits.test["source_index"], splits.test["prompt"], strict=True))


def test_sentences_and_words():
    assert split_sentences("one line . \nanother one .\n\nA third. And a fourth! <br />fifth") == [
        "one line .", "another one .", "A third.", "And a fourth!", "fifth"]
    assert words("It's Café-au-lait &amp; 2 more_words") == ["it", "s", "cafe", "au", "lait", "2", "more", "words"]


def test_preference_pairs(asset_cache):
    texts = load_texts("sentences", "train", cache=asset_cache)
    label = dict(zip(texts["text"], texts["label"], strict=True))
    pairs = preference_pairs(texts, seed=0)
    assert len(pairs) == min(texts["label"].count(1), texts["label"].count(0)) == 1600
    assert all(label[c] == 1 for c in pairs["chosen"]) and all(label[r] == 0 for r in pairs["rejected"])
    assert pairs.to_dict() == preference_pairs(texts, seed=0).to_dict()
    assert pairs["chosen"] != preference_pairs(texts, seed=1)["chosen"]
    unbalanced = Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 1, 0]})
    assert len(preference_pairs(unbalanced)) == 1
    with pytest.raises(ValueError, match="both labels"):
        preference_pairs(Dataset.from_dict({"text": ["a"], "label": [1]}))


# ---- the held-out prompts' disk cache ----------------------------------------------------------------------

WORDS = "the film plot actor scene story ending music light camera long slow bright quiet dull warm".split()


def _write_texts(path: Path, lead: str = "Text", n: int = 60) -> Path:
    """`n` texts of two to four sentences of varied words (one per line), each starting with `lead`; every third
    one also holds a sentence that is in other texts too (a held-out one shares it with train texts)."""
    import random

    rng = random.Random(0)
    lines = [f"{lead} {i}: " + " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize()
                                         + "." for _ in range(rng.randint(2, 4)))
             + " The camera stays on the actor through the whole quiet scene." * (i % 3 == 0) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _file_splits(tokenizer, cache, path, seed=0, **kw):
    args = {"min_tokens": 4, "max_tokens": 9, "heldout": "sentences", "per_text": 3, "exclude_seen": ["train"]} | kw
    return prompt_splits("file", tokenizer, args.pop("min_tokens"), args.pop("max_tokens"), seed, cache=cache,
                         path=path, **args)


def _heldout(splits) -> tuple[dict, dict]:
    return splits.validation.to_dict(), splits.test.to_dict()


@pytest.fixture
def count_heldout(monkeypatch):
    """Counts the calls of `_heldout_rows` (the work the cache saves); `.fail = True` makes a call raise."""
    from warp_lightning.data import prompts

    real = prompts._heldout_rows

    def counted(*args, **kwargs):
        assert not counted.fail, "held-out prompts computed again: the cache was not used"
        counted.calls += 1
        return real(*args, **kwargs)

    counted.calls, counted.fail = 0, False
    monkeypatch.setattr(prompts, "_heldout_rows", counted)
    return counted


def test_held_out_prompts_are_read_back_from_the_cache(asset_cache, gpt2_tokenizer, tmp_path, monkeypatch, caplog,
                                                       count_heldout):
    """The default data config: a second call reads the held-out prompts back (same rows, same log lines plus one
    naming the cache file), and they equal those computed with the cache off."""
    from omegaconf import OmegaConf

    from warp_lightning.data import prompts

    monkeypatch.setattr(prompts, "prompt_cache_dir", lambda cache: tmp_path / "prompts")
    data = OmegaConf.load(REPO / "conf" / "data" / "reviews.yaml")

    def call():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="warp_lightning.data.prompts"):
            splits = splits_for(data, gpt2_tokenizer, seed=0, cache=asset_cache)
        return splits, [r.getMessage() for r in caplog.records if r.name == "warp_lightning.data.prompts"]

    first, computed_log = call()
    files = list((tmp_path / "prompts").glob("heldout-*.json"))
    assert len(files) == 1 and count_heldout.calls == 1
    assert any("held-out prompts dropped" in m for m in computed_log)
    count_heldout.fail = True
    second, read_log = call()
    assert _heldout(second) == _heldout(first)
    assert second.train.to_dict() == first.train.to_dict()
    assert read_log == [f"reviews held-out prompts: read from the cache {files[0]} (computed once for these "
                        "settings)", *computed_log]

    count_heldout.fail = False
    monkeypatch.setenv(prompts.PROMPT_CACHE_ENV, "0")
    written = files[0].stat().st_mtime_ns
    uncached, uncached_log = call()
    assert count_heldout.calls == 2 and uncached_log == computed_log
    assert _heldout(uncached) == _heldout(first)
    assert list((tmp_path / "prompts").glob("heldout-*.json")) == files and files[0].stat().st_mtime_ns == written


def test_a_changed_setting_or_tokenizer_misses_the_cache(tmp_path, asset_cache, gpt2_tokenizer, count_heldout):
    from transformers import AutoTokenizer

    from warp_lightning.data import prompts
    from warp_lightning.data.assets import fetch

    path = _write_texts(tmp_path / "texts.txt")
    cached = lambda: sorted((tmp_path / "prompts").glob("heldout-*.json"))  # noqa: E731
    base = _heldout(_file_splits(gpt2_tokenizer, tmp_path, path))
    assert len(cached()) == 1 and count_heldout.calls == 1
    for n, change in enumerate([{"max_tokens": 10}, {"exclude_seen": []}, {"per_text": 2},
                                {"validation_fraction": 0.5}, {"heldout": "first"}], start=2):
        other = _heldout(_file_splits(gpt2_tokenizer, tmp_path, path, **change))
        assert len(cached()) == n and count_heldout.calls == n, change
        assert other != base, change
    other_tokenizer = AutoTokenizer.from_pretrained(fetch("gpt2_tokenizer", cache=asset_cache))
    other_tokenizer.add_tokens(["film plot"])  # same name_or_path, other tokens
    _file_splits(other_tokenizer, tmp_path, path)
    assert len(cached()) == 7 and count_heldout.calls == 7
    count_heldout.fail = True  # the first settings are still cached
    assert _heldout(_file_splits(gpt2_tokenizer, tmp_path, path)) == base
    # the hub's imdb (online) is never cached
    settings = {"name": "imdb", "min_tokens": 5, "max_tokens": 20, "heldout": "first", "per_text": 1,
                "validation_fraction": 0.5, "exclude_seen": []}
    assert prompts._heldout_cache_entry(settings, gpt2_tokenizer, tmp_path, None) == (None, None)
    assert prompts._heldout_cache_entry({**settings, "name": "file", "exclude_seen": ["imdb"]}, gpt2_tokenizer,
                                        tmp_path, path) == (None, None)


def test_an_edited_text_file_misses_the_cache(tmp_path, gpt2_tokenizer, count_heldout, monkeypatch):
    import os

    from warp_lightning.data import prompts

    path = _write_texts(tmp_path / "texts.txt", "Text")
    before = _file_splits(gpt2_tokenizer, tmp_path, path)
    assert any(p.startswith("Text ") for p in [*before.validation["prompt"], *before.test["prompt"]])
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    _write_texts(path, "Line")  # other texts of the same size: only the modification time tells
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    assert path.stat().st_size == size
    after = _file_splits(gpt2_tokenizer, tmp_path, path)
    assert count_heldout.calls == 2 and len(list((tmp_path / "prompts").glob("heldout-*.json"))) == 2
    held = [*after.validation["prompt"], *after.test["prompt"]]
    assert any(p.startswith("Line ") for p in held) and not any("Text" in p for p in held)
    assert all(p.startswith("Line ") for p in after.train["prompt"])
    monkeypatch.setenv(prompts.PROMPT_CACHE_ENV, "0")
    assert _heldout(_file_splits(gpt2_tokenizer, tmp_path, path)) == _heldout(after)


def test_a_corrupt_cache_file_is_computed_again_and_replaced(tmp_path, gpt2_tokenizer, count_heldout, caplog):
    import json

    path = _write_texts(tmp_path / "texts.txt")
    first = _heldout(_file_splits(gpt2_tokenizer, tmp_path, path))
    (file,) = (tmp_path / "prompts").glob("heldout-*.json")
    good = file.read_bytes()
    broken_column = json.dumps({**json.loads(good), "test": {"prompt": 3}}).encode()  # the right key, bad rows
    for garbage in (b"\x00\xff\xfe not json", good[: len(good) // 2], b"[]", broken_column):
        file.write_bytes(garbage)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="warp_lightning.data.prompts"):
            assert _heldout(_file_splits(gpt2_tokenizer, tmp_path, path)) == first
        assert [r.getMessage().split(" (")[0] for r in caplog.records if r.levelno == logging.WARNING] == [
            f"ignoring the unreadable held-out prompt cache {file}"]
        assert json.loads(file.read_bytes()) == json.loads(good)
    assert count_heldout.calls == 5
    assert not [p for p in file.parent.iterdir() if p != file]  # no temporary file left behind
    count_heldout.fail = True
    assert _heldout(_file_splits(gpt2_tokenizer, tmp_path, path)) == first


def test_train_prompts_still_follow_the_seed_when_held_out_ones_are_cached(tmp_path, gpt2_tokenizer,
                                                                           count_heldout):
    path = _write_texts(tmp_path / "texts.txt")
    a = _file_splits(gpt2_tokenizer, tmp_path, path, seed=0)
    count_heldout.fail = True
    b = _file_splits(gpt2_tokenizer, tmp_path, path, seed=1)
    assert a.train["input_ids"] != b.train["input_ids"]
    assert a.train.to_dict() == _file_splits(gpt2_tokenizer, tmp_path, path, seed=0).train.to_dict()
    assert _heldout(a) == _heldout(b) and len(a.validation) and len(a.test)


def test_writing_an_entry_removes_those_of_another_code_version(tmp_path, gpt2_tokenizer, count_heldout, monkeypatch):
    from warp_lightning.data import prompts

    path = _write_texts(tmp_path / "texts.txt")
    folder = tmp_path / "prompts"
    folder.mkdir()
    stale = [folder / "heldout-00000000-0123456789abcdef.json", folder / "heldout-0123456789abcdef.json"]
    for f in stale:
        f.write_text("{}")
    first = _heldout(_file_splits(gpt2_tokenizer, tmp_path, path))
    (current,) = folder.glob("heldout-*.json")  # the stale entries are gone
    assert current.name.startswith(f"heldout-{prompts._code_digest()[:8]}-")
    other = _heldout(_file_splits(gpt2_tokenizer, tmp_path, path, max_tokens=10))  # same code: both entries stay
    assert len(list(folder.glob("heldout-*.json"))) == 2 and other != first
    monkeypatch.setattr(prompts, "_code_digest", lambda: "f" * 64)  # the code changed: computed again, old removed
    assert _heldout(_file_splits(gpt2_tokenizer, tmp_path, path)) == first and count_heldout.calls == 3
    assert [f.name.split("-")[1] for f in folder.glob("heldout-*.json")] == ["ffffffff"]


def test_text_set_prompts_get_the_special_tokens_the_tokenizer_adds_and_the_cache_keeps_them_apart(
        tmp_path, asset_cache, gpt2_tokenizer, count_heldout):
    """Every split's prompt is its first n tokens between the special tokens the tokenizer adds (as TRL tokenizes a
    standard prompt): none for GPT-2, whose ids stay those of the text alone; a BOS for a tokenizer that adds one
    (Llama-style). The held-out prompts' cache never serves one tokenizer's ids to the other."""
    from transformers import AutoTokenizer

    from warp_lightning.data.assets import fetch
    from warp_lightning.data.prompts import TEXT_PROMPT_COLUMNS, special_tokens

    bos = AutoTokenizer.from_pretrained(fetch("gpt2_tokenizer", cache=asset_cache), add_bos_token=True)
    assert special_tokens(gpt2_tokenizer) == ([], []) and special_tokens(bos) == ([bos.bos_token_id], [])
    path = _write_texts(tmp_path / "texts.txt")
    plain = _file_splits(gpt2_tokenizer, tmp_path, path)
    with_bos = _file_splits(bos, tmp_path, path)
    assert count_heldout.calls == 2  # the BOS tokenizer's prompts are its own entry, not GPT-2's read back
    for name in SPLIT_NAMES:
        a, b = plain.get(name), with_bos.get(name)
        assert tuple(a.column_names) == ("prompt", "input_ids", *TEXT_PROMPT_COLUMNS[1:])  # the same in every split
        assert a["prompt"] == b["prompt"] and b["input_ids"] == [[bos.bos_token_id, *ids] for ids in a["input_ids"]]
        for prompt, ids in zip(a["prompt"], a["input_ids"], strict=True):
            assert gpt2_tokenizer.decode(ids) == prompt and gpt2_tokenizer(prompt)["input_ids"] == ids
    count_heldout.fail = True  # both are cached now, each read back as computed
    assert _heldout(_file_splits(bos, tmp_path, path)) == _heldout(with_bos)
    assert _heldout(_file_splits(gpt2_tokenizer, tmp_path, path)) == _heldout(plain)
