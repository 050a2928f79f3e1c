"""The graphed decoder's bookkeeping on CPU: kept buffers reused across rollouts of one shape, prompts padded to a
bucket, in-place weight updates seen, replaced weights giving a fresh decoder, rollouts owning their tensors.

On CPU the 'replay' below runs the captured function eagerly on the decoder's kept buffers; what CUDA adds
(capture and replay) is checked by tests/policy/test_gpu_policy.py.
"""

import pytest
import torch
from test_sampling import EOS, peaked_policy, prompts

from warp_lightning.policy import sampling
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.sampling import sample
from warp_lightning.policy.vocab_ops import EAGER_KERNELS


@pytest.fixture
def graphed(monkeypatch):
    """`sample` takes its graph path on CPU; each 'replay' runs the loop over the kept buffers, the first one of a
    decoder three times as CUDA does (warm-up, capture, replay). Before each run, what the loop must compute
    itself is overwritten with garbage: a run that skipped a write (say, of a KV-cache column, after Python
    state left by the run before) would read it. Yields the decoders replayed, in order."""
    replayed = []

    def replay(self, model):
        for _ in range(1 if self in replayed else 3):
            p = self.prompt_len
            for layer in self.cache.layers:  # finite: columns not yet written are masked, not NaN-proof
                layer.room[:, :, :, p:] = 100 * torch.randn_like(layer.room[:, :, :, p:])
            self.ids[:, p:], self.alive[:] = 1, False
            self.key_mask[:, p:], self.completion[:] = True, False
            self.lse.fill_(7.0)
            self.logits[..., : self.vocab] = 5.0
            self.decode(model, EAGER_KERNELS, early_break=False)
        replayed.append(self)

    monkeypatch.setattr(sampling, "_graphable", lambda model, device: True)
    monkeypatch.setattr(sampling._Decoder, "replay", replay)
    yield replayed


def _run(model, ids, mask, seed, graphs, **kw):
    kw = {"eos_token_id": EOS, "pad_token_id": 0, "min_new_tokens": 2, "temperature": 0.8, **kw}
    r = sample(model, ids, mask, 9, generator=torch.Generator().manual_seed(seed), cuda_graphs=graphs,
               pad_prompts_to=sampling.GRAPH_BUCKET, **kw)
    with torch.no_grad():
        return r, completion_logprobs(model, r)[0]


def _same(a, b):
    (ra, la), (rb, lb) = a, b
    assert ra.prompt_len == rb.prompt_len == sampling.GRAPH_BUCKET
    assert torch.equal(ra.input_ids, rb.input_ids) and torch.equal(ra.attention_mask, rb.attention_mask)
    assert torch.equal(ra.completion_mask, rb.completion_mask) and torch.allclose(la, lb, atol=1e-12)


def test_graph_path_reuses_one_decoder_per_shape_and_equals_the_eager_path(graphed):
    model = peaked_policy()
    ids, mask = prompts()
    first = _run(model, ids, mask, 0, graphs=True)
    _same(first, _run(model, ids, mask, 0, graphs=False))
    assert not first[0].completion_mask.all()  # rows ended at EOS: later columns are padding, as eagerly
    # other prompts of the same bucket and another seed: the same buffers, no state left from the last rollout
    other_ids, other_mask = prompts(3)
    other_ids = (other_ids + 1) % 6 * other_mask
    second = _run(model, other_ids, other_mask, 1, graphs=True)
    _same(second, _run(model, other_ids, other_mask, 1, graphs=False))
    assert graphed[0] is graphed[1] and len(sampling._DECODERS[model][1]) == 1
    assert torch.equal(first[0].input_ids, _run(model, ids, mask, 0, graphs=True)[0].input_ids)  # owned copies
    _run(model, ids[:3], mask[:3], 0, graphs=True)  # another batch size: another decoder
    assert graphed[-1] is not graphed[0] and len(sampling._DECODERS[model][1]) == 2


def test_graph_path_sees_in_place_updates_and_starts_afresh_for_replaced_weights(graphed):
    model = peaked_policy()
    ids, mask = prompts()
    before = _run(model, ids, mask, 2, graphs=True)
    with torch.no_grad():
        for p in model.parameters():  # an optimizer step or EMA update: same storage
            p.add_(0.3 * torch.randn_like(p))
    after = _run(model, ids, mask, 2, graphs=True)
    assert graphed[0] is graphed[1] and not torch.equal(before[0].input_ids, after[0].input_ids)
    _same(after, _run(model, ids, mask, 2, graphs=False))
    for p in model.parameters():  # new storage (e.g. `load_state_dict(assign=True)`): a graph would read the old
        p.data = p.data.clone()
    _same(_run(model, ids, mask, 2, graphs=True), after)
    assert graphed[2] is not graphed[1]


def test_kept_logits_of_the_graph_path_are_the_rollouts_own(graphed):
    model = peaked_policy()
    ids, mask = prompts()
    first, _ = _run(model, ids, mask, 0, graphs=True, keep_logits=True)
    saved = first.logits.clone(), first.logsumexp.clone()
    second, _ = _run(model, ids, mask, 1, graphs=True, keep_logits=True)
    assert torch.equal(first.logits, saved[0]) and torch.equal(first.logsumexp, saved[1])
    assert first.sampled_by(model) and second.sampled_by(model)
    plain, _ = _run(model, ids, mask, 1, graphs=False, keep_logits=True)
    assert torch.equal(second.logits, plain.logits) and torch.equal(second.logsumexp, plain.logsumexp)
