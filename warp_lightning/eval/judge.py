"""A held-out sentiment judge: what every evaluated completion is scored with beside the proxy reward.

The policy is trained against the reward model (a MiniLM transformer fine-tuned on Rotten Tomatoes snippets), so
its reward measures how well the policy exploits that model as much as how positive the text is. The judge is
built from other data and another model family: TF-IDF features and a logistic regression (scikit-learn),
fitted on the train split of Pang & Lee's sentence polarity set (the reward model's snippets are de-duplicated
against it: no snippet equals one of its sentences, though about 0.2% share an 8-word run with one), with its accuracy on the held-out split. It is cheap (about a second to fit, no
file to cache: the same data and settings give the same judge) and never seen by training.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warp_lightning import UserError
from warp_lightning.data.texts import load_texts

DEFAULTS = {"name": "tfidf_lr", "train_data": "sentences", "ngram_max": 1, "C": 8.0, "reads": "prompt_completion"}
READS = ("prompt_completion", "completion")


@dataclass
class Judge:
    """`judge(texts)`: the probability that each text is positive. `accuracy`: on the held-out split."""
    name: str
    pipeline: object = field(repr=False)
    train_data: str
    n_train: int
    n_test: int
    accuracy: float
    reads: str = "prompt_completion"  # or "completion": the answer alone (chat prompts carry their template)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return self.pipeline.predict_proba(list(texts))[:, 1]

    def describe(self) -> dict:
        return {"name": self.name, "train_data": self.train_data, "n_train": self.n_train,
                "n_test": self.n_test, "accuracy": self.accuracy, "reads": self.reads}


def fit_judge(train_texts, train_labels, ngram_max: int = 1, C: float = 8.0):
    """TF-IDF (sublinear term frequency, words 1..ngram_max) then an L2 logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, int(ngram_max)), sublinear_tf=True, lowercase=True),
                             LogisticRegression(C=float(C), max_iter=2000))
    return pipeline.fit(list(train_texts), list(train_labels))


@functools.lru_cache(maxsize=4)
def _build(name: str, train_data: str, ngram_max: int, C: float, cache: str | None) -> Judge:
    train, test = load_texts(train_data, "train", cache), load_texts(train_data, "test", cache)
    pipeline = fit_judge(train["text"], train["label"], ngram_max, C)
    accuracy = float(pipeline.score(list(test["text"]), list(test["label"])))
    return Judge(name, pipeline, train_data, len(train), len(test), accuracy)


def load_judge(cfg=None, cache: str | Path | None = None) -> Judge:
    """The judge of a `judge` config (conf/judge/*.yaml; the defaults without one), fitted once per process."""
    get = (lambda k: DEFAULTS[k]) if cfg is None else (lambda k: cfg.get(k, DEFAULTS[k]))
    reads = str(get("reads"))
    if reads not in READS:
        raise UserError(f"judge.reads={reads!r} is invalid: choose {' or '.join(READS)}")
    return dataclasses.replace(_build(str(get("name")), str(get("train_data")), int(get("ngram_max")), float(get("C")),
                                      str(cache) if cache else None), reads=reads)
