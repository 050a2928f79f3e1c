"""The three reward kinds behind one call (reward/rewards.py): a classifier on a chosen label, a Python function
reading dataset columns, a weighted sum; their bad inputs (one line, before any work) and the default unchanged."""

import copy
import csv
import importlib
import json
import sys
import textwrap

import pytest
import torch
from cli.test_reliability import tiny_module
from conftest import SMOKE_RUN, cli, warp_cfg
from omegaconf import OmegaConf
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from warp_lightning import NonFiniteError, UserError
from warp_lightning.cli import CONF_DIR
from warp_lightning.policy.sampling import Rollout, decode_prompts_completions, decode_texts
from warp_lightning.reward.rewards import (
    ClassifierReward,
    RewardScores,
    check_reward_columns,
    check_reward_config,
    classifier_configs,
    function_scores,
    load_reward,
)
from warp_lightning.reward.scorer import RewardModel

TEXTS = ["a wonderful film", "dull and lifeless, a mess", "", "fine"]


@pytest.fixture(scope="module")
def two_labels(asset_cache, tmp_path_factory):
    """A tiny random two-label BERT classifier (NEGATIVE, POSITIVE) with MiniLM's tokenizer, saved to a folder."""
    from warp_lightning.data.assets import fetch

    tokenizer = AutoTokenizer.from_pretrained(fetch("minilm", cache=asset_cache))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    folder = tmp_path_factory.mktemp("two_labels")
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def classifier(folder, **keys):
    return OmegaConf.create({"kind": "classifier", "name_or_path": str(folder), "max_length": 32, "batch_size": 3,
                             "score": "logit", "reads": "completion", **keys})


def hand_logits(folder, texts) -> torch.Tensor:
    """What a sequence classifier gives each text alone (no padding): its logits, float32."""
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return torch.cat([model(**tokenizer([t], truncation=True, max_length=32, return_tensors="pt")).logits
                          for t in texts]).float()


def test_a_two_label_classifier_scores_the_chosen_label_by_index_or_name(two_labels):
    logits = hand_logits(two_labels, TEXTS)
    by_index = load_reward(classifier(two_labels, label=1))([""] * 4, TEXTS, {})
    by_name = load_reward(classifier(two_labels, label="POSITIVE"))([""] * 4, TEXTS, {})
    assert isinstance(by_index, RewardScores) and by_index.total.dtype == torch.float32 and by_index.terms == {}
    assert torch.equal(by_index.total, by_name.total)
    assert torch.allclose(by_index.total, logits[:, 1], atol=1e-5)
    negative = load_reward(classifier(two_labels, label="NEGATIVE"))([""] * 4, TEXTS, {}).total
    assert torch.allclose(negative, logits[:, 0], atol=1e-5)
    probability = load_reward(classifier(two_labels, label=1, score="probability"))([""] * 4, TEXTS, {}).total
    hand = torch.exp(logits[:, 1]) / torch.exp(logits).sum(-1)
    assert torch.allclose(probability, hand, atol=1e-6)


def test_reads_the_completion_alone_or_after_its_prompt(two_labels):
    prompts, completions = ["the film was ", "i thought it "], ["great", "dull"]
    alone = load_reward(classifier(two_labels, label=1))(prompts, completions).total
    after = load_reward(classifier(two_labels, label=1, reads="prompt_completion"))(prompts, completions).total
    assert torch.allclose(alone, hand_logits(two_labels, completions)[:, 1], atol=1e-5)
    assert torch.allclose(after, hand_logits(two_labels, ["the film was great", "i thought it dull"])[:, 1], atol=1e-5)


def test_the_default_classifier_scores_as_before_bit_for_bit(tiny_models):
    """conf/reward_model/minilm_rt.yaml as the classifier kind: today's RewardModel on prompt + completion, and
    its formula by hand (batches of 64, padded, sigmoid of the single output)."""
    folder = tiny_models / "models" / "reward_minilm_rt"
    cfg = OmegaConf.load(CONF_DIR / "reward_model" / "minilm_rt.yaml")
    cfg.name_or_path = str(folder)
    reward = load_reward(cfg)
    assert isinstance(reward, ClassifierReward) and reward.reads == "prompt_completion"
    prompts, completions = ["a wonderful", "dull and", "", "the plot"], [" film", " lifeless", "fine", ""]
    texts = [p + c for p, c in zip(prompts, completions, strict=True)]
    scores = reward(prompts, completions, {}).total
    model = RewardModel.from_pretrained(folder, sigmoid=True, max_length=128, batch_size=64)
    assert torch.equal(scores, model(texts))
    with torch.no_grad():
        batch = model.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        assert torch.equal(scores, torch.sigmoid(model.model(**batch).logits.float()[:, 0]))


def test_prompt_and_completion_texts_join_into_the_row_decoded_at_once(gpt2_tokenizer):
    """Also when a character's bytes straddle the boundary (GPT-2 byte tokens): it goes to the completion."""
    pad = gpt2_tokenizer.eos_token_id
    split = gpt2_tokenizer.encode("a \u732b")  # a CJK character is three byte tokens: the prompt ends after the first
    pieces = [gpt2_tokenizer.decode([t]) for t in split]
    cut = next(i for i, p in enumerate(pieces) if "\ufffd" in p) + 1
    rows = [([pad] + split[:cut], split[cut:] + gpt2_tokenizer.encode(" is here")), (gpt2_tokenizer.encode("the plot"),
            gpt2_tokenizer.encode(" was thin") + [pad, pad])]
    lp, lc = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
    ids = torch.tensor([[pad] * (lp - len(p)) + p + c + [pad] * (lc - len(c)) for p, c in rows])
    mask = torch.tensor([[0] * (lp - len(p)) + [1] * len(p) + [1] * len(c) + [0] * (lc - len(c)) for p, c in rows])
    mask[0, lp - len(rows[0][0])] = 0  # a left pad
    mask[1, -2:] = 0  # after EOS
    rollout = Rollout(ids, mask, lp, mask[:, lp:])
    prompts, completions = decode_prompts_completions(gpt2_tokenizer, rollout)
    assert [p + c for p, c in zip(prompts, completions, strict=True)] == decode_texts(gpt2_tokenizer, rollout)
    assert prompts == ["a ", "the plot"] and completions == ["\u732b is here", " was thin"]


@pytest.fixture
def rule_module(tmp_path, monkeypatch):
    """A module of rules in the working directory (importable as `my_rules`)."""
    (tmp_path / "my_rules.py").write_text(textwrap.dedent("""
        def mentions(completions, film):
            return [float(f.lower() in c.lower()) for c, f in zip(completions, film)]

        def words(completions, prompts, scale=1.0, **columns):
            return [scale * len(c.split()) for c in completions]

        def broken(completions, mode):
            n = len(completions)
            return {"short": [1.0], "text": ["a"] * n, "nan": [0.0] * (n - 1) + [float("nan")]}[mode]

        NOT_A_FUNCTION = 3
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rules"
    sys.modules.pop("my_rules", None)


def function(spec, **keys):
    return OmegaConf.create({"kind": "function", "function": spec, **keys})


def test_a_function_reads_an_extra_dataset_column(rule_module):
    reward = load_reward(function(f"{rule_module}:mentions"))
    scores = reward(["p"] * 3, ["I loved Alien", "meh", "heat was long"], {"film": ["Alien", "Alien", "Heat"],
                                                                            "unused": [1, 2, 3]})
    assert torch.equal(scores.total, torch.tensor([1.0, 0.0, 1.0])) and scores.terms == {}
    check_reward_columns(function(f"{rule_module}:mentions"), {"prompt", "film"})
    with pytest.raises(UserError, match=r"^reward_model.function='my_rules:mentions' needs the column film, which "
                                        r"the dataset lacks \(its columns: prompt\)"):
        check_reward_columns(function(f"{rule_module}:mentions"), {"prompt"})


def prompts_with_a_completions_column(path):
    """A data=prompts JSONL file whose rows carry a column named `completions` (e.g. reference answers)."""
    path.write_text("".join(json.dumps({"prompt": f"Review the film number {i}", "completions": "a reference"}) + "\n"
                            for i in range(20)))
    return path


def test_a_dataset_column_named_like_an_argument_of_the_reward_is_refused_before_any_work(rule_module, tmp_path):
    """A column `completions` would replace the policy's completions in fn(prompts=..., completions=..., **columns):
    one line at the config check, naming data.path, the column and the fix; the reward call refuses it too."""
    from warp_lightning.cli import check_overrides
    from warp_lightning.train.commands import TRAIN

    data = prompts_with_a_completions_column(tmp_path / "prompts.jsonl")
    with pytest.raises(UserError) as caught:
        check_overrides(TRAIN, [*SMOKE_RUN[1:], "data=prompts", f"data.path={data}", "reward_model=function",
                                  f"reward_model.function={rule_module}:words", f"paths.models_dir={tmp_path / 'm'}"])
    assert str(caught.value) == (f"data.path='{data}' is invalid: its column completions has the name of an argument "
                                 "that reward_model.function='my_rules:words' gets from the reward itself (prompts, "
                                 "completions) and would replace it; rename the column")
    reward = load_reward(function(f"{rule_module}:words"))
    with pytest.raises(UserError, match=r"^reward term 'words': the dataset's column completions has the name of an "
                                        r"argument the reward passes itself \(prompts, completions\) and would "
                                        r"replace it; rename the column$"):
        reward(["p"], ["one two"], {"completions": ["a reference"]})
    # a keyword of `arguments` is passed by the reward too; a sum's function term is checked like a function
    cfg = OmegaConf.create({"kind": "sum", "terms": {"n": {
        "kind": "function", "function": f"{rule_module}:words", "arguments": {"scale": 2.0}, "weight": 1.0}}})
    with pytest.raises(UserError, match=r"^data.path='x.jsonl' is invalid: its column scale has the name of an "
                                        r"argument that reward_model.terms.n.function='my_rules:words' gets from the "
                                        r"reward itself \(prompts, completions, scale\) and would replace it; rename "
                                        r"the column or drop reward_model.terms.n.arguments.scale$"):
        check_reward_columns(cfg, {"prompt", "scale"}, source="data.path='x.jsonl'")
    check_reward_columns(cfg, {"prompt", "film"})  # other columns pass


def test_train_with_a_column_named_completions_exits_2_with_one_line_and_writes_nothing(rule_module, tmp_path):
    data = prompts_with_a_completions_column(tmp_path / "prompts.jsonl")
    run, models = tmp_path / "run", tmp_path / "models"
    proc = cli(*SMOKE_RUN, "data=prompts", f"data.path={data}", "reward_model=function",
               f"reward_model.function={rule_module}:words", f"paths.models_dir={models}", f"hydra.run.dir={run}",
               cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: data.path='{data}' is invalid: its column completions has the name of an "
                               "argument that reward_model.function='my_rules:words' gets from the reward itself")
    assert not run.exists() and not models.exists()


def test_the_weighted_sum_is_the_hand_weighted_terms(two_labels, rule_module):
    cfg = OmegaConf.create({"kind": "sum", "terms": {
        "sentiment": {**OmegaConf.to_container(classifier(two_labels, label="POSITIVE")), "weight": 0.5},
        "words": {"kind": "function", "function": f"{rule_module}:words", "arguments": {"scale": 2.0},
                  "weight": -0.25}}})
    prompts, completions = ["p"] * 3, ["a great film", "bad", "it was fine i guess"]
    scores = load_reward(cfg)(prompts, completions, {})
    sentiment = hand_logits(two_labels, completions)[:, 1]
    words = torch.tensor([6.0, 2.0, 10.0])
    assert torch.equal(scores.terms["words"], words) and list(scores.terms) == ["sentiment", "words"]
    assert torch.allclose(scores.terms["sentiment"], sentiment, atol=1e-5)
    assert torch.allclose(scores.total, 0.5 * sentiment - 0.25 * words, atol=1e-5)
    assert list(classifier_configs(cfg)) == ["reward_model.terms.sentiment"]  # what is built on first use


def test_the_shipped_function_and_sum_configs_load(tiny_models):
    """conf/reward_model/function.yaml and sum.yaml (the trained reward model on the completion + the length rule)."""
    length = load_reward(OmegaConf.load(CONF_DIR / "reward_model" / "function.yaml"))
    completions = ["one two three", " ".join(["w"] * 12), ""]
    assert torch.allclose(length(["p"] * 3, completions).total, torch.tensor([0.25, 1.0, 0.0]))
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "reward_model" / "minilm_rt.yaml"),
                          {"reads": "completion", "weight": 1.0})
    cfg.name_or_path = str(tiny_models / "models" / "reward_minilm_rt")
    shipped = OmegaConf.load(CONF_DIR / "reward_model" / "sum.yaml")
    shipped.terms.sentiment = cfg
    scores = load_reward(shipped)(["the film was"] * 3, completions)
    assert list(scores.terms) == ["sentiment", "length"]
    assert torch.allclose(scores.total, scores.terms["sentiment"] + 0.5 * scores.terms["length"])


@pytest.mark.parametrize(("mode", "error", "message"), [
    ("short", UserError, r"^reward term 'length': the function returned 1 values for 3 completions"),
    ("text", UserError, r"^reward term 'length': row 0 returned 'a' \(str\), not a number \(completion 'x'\)"),
    ("nan", NonFiniteError, r"^reward term 'length': row 2 returned nan \(completion 'z'\)"),
])
def test_a_function_returning_a_bad_value_names_the_term_and_the_row(rule_module, mode, error, message):
    reward = load_reward(OmegaConf.create({"kind": "sum", "terms": {"length": {
        "kind": "function", "function": f"{rule_module}:broken", "arguments": {"mode": mode}, "weight": 1.0}}}))
    with pytest.raises(error, match=message) as caught:
        reward(["p"] * 3, ["x", "y", "z"], {})
    assert "\n" not in str(caught.value)


def test_function_scores_take_lists_arrays_tensors_and_bools():
    import numpy as np

    for values in ([1, 0.5, True], np.array([1.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 1.0])):
        assert torch.equal(function_scores(values, ["a", "b", "c"], "t"), torch.tensor([1.0, 0.5, 1.0]))
    with pytest.raises(UserError, match="returned 1.0 \\(float\\), not a list"):
        function_scores(1.0, ["a"], "t")


def test_a_function_reward_inside_training_stops_at_its_step(rule_module, gpt2_tokenizer):
    """train/module.py adds the step and the kept checkpoints to the reward's one line."""
    import lightning as L

    module, prompts = tiny_module(gpt2_tokenizer, load_reward(function(f"{rule_module}:broken", arguments={"mode": "nan"})))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(NonFiniteError, match=r"^reward term 'broken': row 3 returned nan \(completion .*\(at "
                                             r"iteration 1 run 1 step 1\); the checkpoints written before this step "
                                             r"are kept$"):
        trainer.fit(module, prompts)


# --- bad configs: one line before any work ----------------------------------------------------------------------

BAD = [
    (["reward_model=function", "reward_model.function=no_such_module:f"],
     r"reward_model.function='no_such_module:f' is invalid: no module 'no_such_module' in the working directory"),
    (["reward_model=function", "reward_model.function=my_rules:nope"],
     r"reward_model.function='my_rules:nope' is invalid: my_rules has no 'nope'; it defines broken, mentions, words"),
    (["reward_model=function", "reward_model.function=my_rules:NOT_A_FUNCTION"],
     r"reward_model.function='my_rules:NOT_A_FUNCTION' is invalid: my_rules.NOT_A_FUNCTION is a int, not a function"),
    (["reward_model.kind=regression"], r"reward_model.kind='regression' is invalid: choose classifier, function, sum"),
    (["reward_model.label=POSITIVE"], r"reward_model.label='POSITIVE' is invalid: the model's labels are 0 LABEL_0;"),
    (["reward_model=sum", "+reward_model.terms.extra={kind:function,function:'my_rules:words'}"],
     r"reward_model.terms.extra.weight is missing"),
    (["reward_model=sum", "+reward_model.terms.Length={kind:function,function:'my_rules:words',weight:1}"],
     r"reward_model.terms.Length: the term names 'length' and 'Length' clash"),
    (["reward_model=sum", "reward_model.terms.sentiment.kind=sum"],
     r"reward_model.terms.sentiment.kind=sum is invalid: a term cannot be a sum itself"),
    (["reward_model=function", "+reward_model.arguments.target=3"],
     r"reward_model.arguments.target is invalid: warp_lightning.reward.rules:length_rule takes no such keyword"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_a_bad_reward_config_is_one_line_before_the_command_starts(overrides, message, rule_module, tiny_models):
    from warp_lightning.cli import check_overrides
    from warp_lightning.train.commands import TRAIN

    with pytest.raises(UserError, match="^" + message) as caught:
        check_overrides(TRAIN, [*SMOKE_RUN[1:], f"paths.models_dir={tiny_models / 'models'}", *overrides])
    assert "\n" not in str(caught.value)


def test_a_function_that_does_not_import_stops_train_with_one_line_and_status_2(tmp_path, tiny_models):
    run = tmp_path / "run"
    proc = cli(*SMOKE_RUN, f"paths.models_dir={tiny_models / 'models'}", "reward_model=function",
               "reward_model.function=no_such_module:f", f"hydra.run.dir={run}", cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: reward_model.function='no_such_module:f' is invalid: no module")
    assert not run.exists()


def test_check_reward_config_refuses_a_bradley_terry_score_of_two_labels(two_labels):
    with pytest.raises(UserError, match=r"^reward_model.score=bradley_terry needs one output per text \(num_labels=1\)"
                                        r", this model has 2"):
        check_reward_config(classifier(two_labels, score="bradley_terry"))
    with pytest.raises(UserError, match=r"^reward_model.label=2 is invalid: the model's labels are 0 NEGATIVE, "
                                        r"1 POSITIVE; pass an index or a name$"):
        check_reward_config(classifier(two_labels, label=2))


# --- train through the CLI: the sum's terms logged per step ------------------------------------------------------

def test_train_with_a_sum_logs_each_term_per_step(tmp_path, tiny_models):
    run = tmp_path / "run"
    cli("train", "+experiment=smoke", "warp.iterations=1", "warp.runs=1", "warp.steps=2", "eval.prompts=2",
        "reward_model=sum", f"paths.models_dir={tiny_models / 'models'}", f"hydra.run.dir={run}", cwd=tmp_path)
    with open(run / "logs" / "i1_m1" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("reward_mean")]
    assert len(rows) == 2
    for row in rows:  # total = 1.0 * sentiment + 0.5 * length (conf/reward_model/sum.yaml)
        sentiment, length = float(row["reward/sentiment"]), float(row["reward/length"])
        assert 0 < sentiment < 1 and 0 <= length <= 1
        assert float(row["reward_mean"]) == pytest.approx(sentiment + 0.5 * length, abs=1e-5)


def test_a_classifier_term_of_a_sum_is_built_on_first_use_like_the_default(tmp_path):
    """`builds.ensure_model(key, cfg)` over `classifier_configs`: the term's build is `reward` with the reward
    command's own default reward model (conf/reward.yaml: minilm_rt) and the term's build_overrides."""
    from warp_lightning.builds import build_command

    cfg = OmegaConf.load(CONF_DIR / "reward_model" / "sum.yaml")
    cfg.terms.sentiment = OmegaConf.merge(OmegaConf.load(CONF_DIR / "reward_model" / "minilm_rt.yaml"),
                                          {"name_or_path": str(tmp_path / "rm"), "build_overrides": ["x=1"]})
    (key, term), = classifier_configs(cfg).items()
    assert key == "reward_model.terms.sentiment"
    args = build_command(key, term, tmp_path / "rm", None)[3:-1]
    assert args[:2] == ["reward", f"save_to={tmp_path / 'rm'}"] and args[-1] == "x=1"
    # where it reads from, as keys of the reward command's own config (it has no `terms`)
    assert args[2:-1] == ["reward_model.base=minilm", "reward_model.train_data=rt_snippets"]


# --- TRL's conversational convention: chat prompts reach a function as messages, in train and in evaluate --------

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture
def trl_rules(tmp_path, monkeypatch):
    """`reward_len` exactly as TRL's documentation writes it, and `seen`, which keeps what it was given."""
    (tmp_path / "trl_rules.py").write_text(textwrap.dedent('''
        SEEN = []

        def reward_len(completions, **kwargs):
            return [-abs(20 - len(completion[0]["content"])) for completion in completions]

        def seen(prompts, completions, **kwargs):
            SEEN.append({"prompts": prompts, "completions": completions, **kwargs})
            return [0.0] * len(completions)
    '''))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("trl_rules")
    sys.modules.pop("trl_rules", None)


def trl_sum():
    return OmegaConf.create({"kind": "sum", "terms": {
        "len": {"kind": "function", "function": "trl_rules:reward_len", "weight": 1.0},
        "seen": {"kind": "function", "function": "trl_rules:seen", "weight": 1.0}}})


@pytest.fixture
def chat_policy(gpt2_tokenizer):
    """A tiny random GPT-2 policy, the project's GPT-2 tokenizer (pad token added) with a chat template."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from warp_lightning.policy.models import load_tokenizer

    tokenizer = load_tokenizer(gpt2_tokenizer.name_or_path)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=128)).eval(), tokenizer


def chat_split(tmp_path, tokenizer, chat: bool = True):
    """The train split of a data=prompts file of 30 film prompts (chat messages, or strings), with a column."""
    from warp_lightning.data.prompt_datasets import prompt_dataset_splits

    path = tmp_path / "films.jsonl"
    content = [f"Write a one-sentence review of the film number {i}." for i in range(30)]
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": c}] if chat else c, "film": str(i)})
                            + "\n" for i, c in enumerate(content)))
    data = OmegaConf.merge(OmegaConf.load(CONF_DIR / "data" / "prompts.yaml"), {"path": str(path)})
    return prompt_dataset_splits(data, tokenizer, cache=tmp_path)[0]


def test_a_trl_reward_function_gets_chat_prompts_as_messages_in_train_and_in_evaluate(trl_rules, chat_policy,
                                                                                        tmp_path):
    """TRL's `reward_len` (its documentation's, unchanged) on chat prompts, through the reward call, the train
    module's scoring (a batch of PromptBatches) and evaluate's `score_completions`: each prompt is its list of
    messages, each completion [{"role": "assistant", "content": TEXT}], the other columns beside."""
    from warp_lightning.data.prompt_datasets import prompt_columns
    from warp_lightning.data.prompts import PromptBatches
    from warp_lightning.eval.protocol import score_completions
    from warp_lightning.train.module import RLOOModule

    policy, tokenizer = chat_policy
    split = chat_split(tmp_path, tokenizer)
    columns = prompt_columns(split)
    messages = [[{"role": "user", "content": f"Write a one-sentence review of the film number {f}."}]
                for f in columns["film"]]
    reward = load_reward(trl_sum())
    texts = ["a fine film", "x" * 25]
    direct = reward(["p", "q"], texts, {k: v[:2] for k, v in columns.items()})
    assert direct.terms["len"].tolist() == [-9.0, -5.0]
    call = trl_rules.SEEN.pop()
    assert call["prompts"] == messages[:2] and call["film"] == columns["film"][:2]
    assert call["completions"] == [[{"role": "assistant", "content": t}] for t in texts]

    def check(prompts_of_rows, completions, scores):
        call = trl_rules.SEEN.pop()
        assert call["prompts"] == [messages[r] for r in prompts_of_rows]
        assert call["completions"] == [[{"role": "assistant", "content": c}] for c in completions]
        assert call["film"] == [columns["film"][r] for r in prompts_of_rows]
        assert scores == [float(-abs(20 - len(c))) for c in completions]

    # train: a step's batch of 2 prompts, k = 2 samples each
    batches = PromptBatches(list(split["input_ids"]), 1, 2, seed=0, pad_id=tokenizer.pad_token_id, columns=columns)
    ids, mask, batch_columns = batches[0]
    warp = warp_cfg(samples_per_prompt=2, max_new_tokens=4, temperature=1.0, min_new_tokens=0)
    module = RLOOModule(policy, copy.deepcopy(policy), reward, tokenizer, warp, sample_seed=1)
    rollout = module.rollout(ids, mask)
    scores = module.score(rollout, batch_columns)
    rows = [batches.order[r] for r in (0, 0, 1, 1)]
    check(rows, module.decode(rollout)[1], scores.terms["len"].tolist())
    assert torch.equal(scores.total, scores.terms["len"])  # + 1.0 * seen (0)
    # evaluate: 3 prompts, 2 completions each
    out = score_completions(policy, policy, tokenizer, reward, list(split["input_ids"][:3]), 2, 4, 1.0, seed=0,
                            columns={k: v[:3] for k, v in columns.items()})
    check([0, 0, 1, 1, 2, 2], out["completion"], out["reward/len"])


def test_string_prompts_stay_strings_for_a_reward_function(trl_rules, chat_policy, tmp_path):
    from warp_lightning.data.prompt_datasets import prompt_columns

    split = chat_split(tmp_path, chat_policy[1], chat=False)
    columns = prompt_columns(split)
    assert columns["prompt_messages"] == [None] * len(split)
    load_reward(trl_sum().terms.seen)(columns["prompt_text"][:2], ["a", "b"], {k: v[:2] for k, v in columns.items()})
    call = trl_rules.SEEN.pop()
    assert call["prompts"] == columns["prompt"][:2] and call["completions"] == ["a", "b"]
    with pytest.raises(TypeError):  # TRL's own convention: this function reads chat completions only
        load_reward(trl_sum().terms.len)(columns["prompt_text"][:2], ["a", "b"], {k: v[:2] for k, v in columns.items()})


def test_the_shipped_rules_read_chat_completions_too():
    from warp_lightning.reward.rules import length_rule, sentence_rule

    texts = ["one two three", " ".join(["w"] * 12), "It was fine."]
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    assert length_rule(chat) == length_rule(texts) == [0.25, 1.0, 0.25]
    assert sentence_rule(chat) == sentence_rule(texts) == [0.0, 0.0, 1.0]


# --- the checks every command applies to the reward's scores (train, evaluate, front) ----------------------------

def test_evaluate_refuses_a_classifiers_nan_and_a_wrong_count_as_train_does(two_labels, chat_policy):
    """A classifier's NaN was caught in training only: `score_completions` (evaluate, front, the end-of-run check)
    now refuses it in one line naming the term and the row, and a wrong count of scores too."""
    from warp_lightning.eval.protocol import score_completions

    policy, tokenizer = chat_policy
    ids = [tokenizer("a fine film about")["input_ids"], tokenizer("the plot")["input_ids"]]
    cfg = OmegaConf.create({"kind": "sum", "terms": {"sentiment": {**OmegaConf.to_container(
        classifier(two_labels, label=1)), "weight": 1.0}}})
    reward = load_reward(cfg)
    score = lambda r: score_completions(policy, policy, tokenizer, r, ids, 2, 3, 1.0, seed=0)  # noqa: E731
    assert len(score(reward)["reward"]) == 4
    with torch.no_grad():
        reward.terms["sentiment"][0].scorer.model.classifier.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError) as caught:
        score(reward)
    assert str(caught.value).startswith("non-finite reward (term 'sentiment': 4 of 4 completions, first row 0: nan "
                                        "for the completion ") and str(caught.value).endswith("check the reward model")
    with pytest.raises(UserError, match=r"^reward model returned shape \(3,\), expected \(4,\): one score per "):
        score(lambda p, c, columns: RewardScores(torch.zeros(len(c) - 1)))


def test_a_text_sets_columns_reach_the_reward_and_are_checked_before_any_work(rule_module, tmp_path):
    """A built-in text set's prompts carry `label` (and their other columns) to the reward in train as in evaluate
    and front: the check before any work accepts a function reading it, and refuses one needing a column the set
    lacks, naming the set."""
    from warp_lightning.data.prompts import TEXT_PROMPT_COLUMNS
    from warp_lightning.eval.checks import check_reward_data

    (tmp_path / "label_rules.py").write_text("def by_label(completions, label):\n"
                                             "    return [float(x) for x in label]\n")
    cfg = OmegaConf.create({"data": OmegaConf.load(CONF_DIR / "data" / "reviews.yaml"),
                            "paths": {"cache_dir": str(tmp_path)}, "reward_model": function("label_rules:by_label")})
    check_reward_data(cfg)
    reward = load_reward(cfg.reward_model)
    assert reward(["p", "q"], ["a", "b"], {"label": [1, 0]}).total.tolist() == [1.0, 0.0]
    sys.modules.pop("label_rules", None)
    cfg.reward_model = function(f"{rule_module}:mentions")
    have = ", ".join(sorted(TEXT_PROMPT_COLUMNS))
    with pytest.raises(UserError, match=r"^reward_model.function='my_rules:mentions' needs the column film, which "
                                        rf"the dataset lacks \(its columns: {have}\)"):
        check_reward_data(cfg)
    cfg.reward_model = function(f"{rule_module}:words", arguments={"label": 1})
    with pytest.raises(UserError, match=r"^data=reviews is invalid: its column label has the name of an argument"):
        check_reward_data(cfg)
