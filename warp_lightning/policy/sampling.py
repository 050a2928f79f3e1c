"""Sampling completions with static shapes: a KV cache and buffers reserved for the whole rollout, prompts run
once per k samples, inverse-CDF draws from uniforms drawn up front; on CUDA the decode loop is one CUDA graph.

`sample` returns a `Rollout` (prompt + completion ids and masks, and how they were sampled: temperature,
`min_new_tokens`, EOS); `decode_texts` turns it into what the reward model reads. The vocabulary-sized
arithmetic lives in `vocab_ops`.

Every decode step has the same shapes: the cache holds prompt + max_new_tokens columns from the start, each
token is written into its own column and attends to the whole cache through a [B, 1, 1, columns] mask whose
later columns are still 0. On CUDA the loop over all max_new_tokens steps (transformer step, head projection,
draw) is captured once per shape as a CUDA graph and replayed: one launch per rollout instead of thousands of
small kernels, each launched from Python. No step breaks early inside a graph; rows after their EOS are padding.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import weakref
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from warp_lightning.policy.models import position_ids_from_mask
from warp_lightning.policy.sharding import gathers_weights
from warp_lightning.policy.vocab_ops import (
    EAGER_KERNELS,
    KERNELS,
    ban_eos_,
    draw_tokens,
    matmul_dtype,
    padded_vocab,
    project_head,
    reserved_buffer,
)
from warp_lightning.runtime import internals

# Prompt columns are left-padded to a multiple of this when decoding by CUDA graph, so that prompts of nearby
# lengths replay one graph (position ids come from the mask: padding changes no log-prob).
GRAPH_BUCKET = 16
# Decoders (buffers, KV cache and graph) kept per model, the least recently used dropped first.
MAX_DECODERS = 8


def _param_versions(model) -> tuple[int, ...]:
    # every in-place change of a parameter (optimizer step, EMA, load_state_dict) bumps its version; a sharded
    # model's are its shards (`sharding.shard_model`)
    return tuple(internals.version_counter(p) for p in getattr(model, "shards", None) or model.parameters())


@dataclass
class Rollout:
    """Prompts (left-padded) followed by sampled completions (right-padded after EOS), and how they were sampled.

    `temperature`, `min_new_tokens` and `eos_token_id` define the distribution the completions were drawn from:
    softmax(logits / temperature), with EOS at probability 0 at completion positions before `min_new_tokens`.
    `completion_logprobs` scores every model under that same distribution.
    """

    input_ids: torch.Tensor  # [B, Lp + Lc]
    attention_mask: torch.Tensor  # [B, Lp + Lc]
    prompt_len: int  # Lp: completions start at this column for every row
    completion_mask: torch.Tensor  # [B, Lc], 1 up to and including EOS
    temperature: float = 1.0
    min_new_tokens: int = 0
    eos_token_id: int | None = None
    # With `sample(..., keep_logits=True)`: the sampling pass's logits (at the temperature, EOS masked),
    # token-major [Lc, B, padded_vocab(V)] (extra columns -inf), and their log-sum-exp [B, Lc] in float32. They
    # stand for the sampler's own head in `completion_logprobs` while its weights are unchanged.
    logits: torch.Tensor | None = None
    logsumexp: torch.Tensor | None = None
    sampler: tuple | None = field(default=None, repr=False)  # (weakref to the model, its parameter versions)

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    def eos_banned(self) -> torch.Tensor | None:
        """[B, Lc] bool: the completion positions where EOS had probability 0; None when there are none."""
        b, lc = self.completion_mask.shape
        n = min(self.min_new_tokens, lc) if self.eos_token_id is not None else 0
        if n == 0:
            return None
        return (torch.arange(lc, device=self.completion_mask.device) < n).expand(b, lc)

    def sampled_by(self, model) -> bool:
        """Whether `model` sampled this rollout, with no parameter changed in place since."""
        return self.sampler is not None and self.sampler[0]() is model and self.sampler[1] == _param_versions(model)


class _RoomLayer(DynamicLayer):
    """A KV-cache layer in room reserved for the whole rollout, [2, rows, heads, capacity, dim].

    The prompt fills columns 0..Lp-1 (the distinct prompts' rows first, then copied to every row in place);
    each decoded token then writes the next column. While decoding (`static`), `update` returns the whole room,
    masked by the caller's 4D mask: every step has the same shapes and addresses, which a CUDA graph replays,
    where `DynamicLayer` concatenates (copies) its whole cache at every token.
    """

    def __init__(self, capacity: int, rows: int):
        super().__init__()
        self.capacity, self.rows, self.length, self.static, self.room = capacity, rows, 0, False, None

    def reset(self) -> None:
        """Forget the tokens (the room stays): the next `update` starts at column 0."""
        self.length, self.static, self.is_initialized, self.keys, self.values = 0, False, False, None, None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.is_initialized, self.device = True, key_states.device
        if self.room is None:
            _, heads, _, dim = key_states.shape
            self.room = key_states.new_zeros((2, self.rows, heads, self.capacity, dim))
        rows, stop = key_states.shape[0], self.length + key_states.shape[-2]
        self.room[0, :rows, :, self.length : stop] = key_states
        self.room[1, :rows, :, self.length : stop] = value_states
        self.length = stop
        if self.static:
            return self.room[0], self.room[1]
        self.keys, self.values = self.room[0, :rows, :, :stop], self.room[1, :rows, :, :stop]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self.room is not None:
            self.room[:, :, :, : self.length] = self.room[:, indices, :, : self.length]
            self.keys, self.values = self.room[0, :, :, : self.length], self.room[1, :, :, : self.length]


def _repeated_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first, group) when some rows repeat the row above them (the k samples of one prompt, prompt-major):
    `ids[first]` are the distinct rows and row i equals distinct row `group[i]`. None when none repeats."""
    if ids.shape[0] < 2 or ids.shape[1] == 0:
        return None
    repeat = (ids[1:] == ids[:-1]).all(-1) & (mask[1:] == mask[:-1]).all(-1)
    if not repeat.any():
        return None
    new = torch.cat([repeat.new_ones(1), ~repeat])
    return new.nonzero().squeeze(-1), new.long().cumsum(0) - 1


def prompt_forward(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache):
    """Last hidden states of the prompts, filling `cache`; prompts repeated k times run once (then the cache
    is expanded), since at these sizes the k copies would be a third of a step's transformer work."""
    rows = _repeated_rows(ids, mask)
    if rows is None:
        return model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                use_cache=True).last_hidden_state
    first, group = rows
    hidden = model.base_model(input_ids=ids[first], attention_mask=mask[first], position_ids=positions[first],
                              past_key_values=cache, use_cache=True).last_hidden_state
    cache.batch_select_indices(group)
    return hidden[group]


@dataclass(frozen=True)
class _Spec:
    """What a decode loop depends on besides the batch's shape (part of a graph's key)."""

    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    eos_token_id: int | None
    pad_token_id: int
    stop_at_eos: bool
    keep_logits: bool


class _Decoder:
    """Buffers for rollouts of one shape (rows, prompt columns, new tokens) and the decode loop over them.

    Eager (CPU, sharded models, `cuda_graphs=False`): fresh buffers per call. Graphed: kept per model and shape;
    the loop over all steps is captured as one CUDA graph the first time and replayed after. The graph reads the
    model's parameters where they are: in-place updates (optimizer, EMA, `load_state_dict`) are seen by the next
    replay; a parameter given new storage makes `_decoder` capture afresh.
    """

    def __init__(self, model, rows: int, prompt_len: int, spec: _Spec, dtype: torch.dtype, device: torch.device,
                 graphed: bool):
        n, columns = spec.max_new_tokens, prompt_len + spec.max_new_tokens
        self.spec, self.prompt_len, self.graphed, self.graph = spec, prompt_len, graphed, None
        self.ids = torch.full((rows, columns), spec.pad_token_id, dtype=torch.long, device=device)
        self.key_mask = torch.zeros((rows, columns), dtype=torch.bool, device=device)
        self.completion = torch.zeros((rows, n), dtype=torch.bool, device=device)
        self.alive = torch.ones(rows, dtype=torch.bool, device=device)
        self.last_position = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.vocab = model.get_output_embeddings().weight.shape[0]
        shape = (n if spec.keep_logits else 1, rows, padded_vocab(self.vocab))
        keep_reserved = spec.keep_logits and not graphed  # a graph's buffers are its own; rollouts get copies
        self.logits = reserved_buffer(shape, dtype, device) if keep_reserved else torch.empty(shape, dtype=dtype, device=device)
        self.logits[..., self.vocab :] = float("-inf")
        self.lse = torch.empty((n, rows), dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                               device=device)
        self.uniforms = torch.empty((n, rows, 1), dtype=self.lse.dtype, device=device)
        self.hidden: torch.Tensor | None = None
        self.cache = DynamicCache()
        self.cache.layer_class_to_replicate = functools.partial(_RoomLayer, columns, rows)
        self.attention = internals.attention_implementation(model)

    def prefill(self, model, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """The prompts' forward into the reserved cache; the last hidden state, the last position."""
        p = self.prompt_len
        self.ids[:, :p] = ids
        self.key_mask[:, :p] = mask.bool()
        for layer in self.cache.layers:
            layer.reset()
        positions = position_ids_from_mask(mask)
        hidden = prompt_forward(model, ids, mask, positions, self.cache)[:, -1]
        if self.hidden is None:
            self.hidden = torch.empty_like(hidden)
        self.hidden.copy_(hidden)
        self.last_position.copy_(positions[:, -1:])
        for layer in self.cache.layers:
            layer.static = True

    def _step_mask(self) -> torch.Tensor:
        """The 4D mask of one decoding query over every cache column (later columns are still 0)."""
        allowed = self.key_mask[:, None, None, :]
        if self.attention == "eager":  # added to the attention scores
            dtype = self.hidden.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
                ~allowed, torch.finfo(dtype).min)
        return allowed  # sdpa: True takes part

    def decode(self, model, kernels: dict, early_break: bool) -> int:
        """All decode steps from the prefilled state (static shapes; on CPU it may stop once every row has
        ended). Returns the number of steps run. Reads and writes only this decoder's buffers, the model's
        parameters and what it allocates itself: a CUDA graph of it stays valid."""
        s, p = self.spec, self.prompt_len
        head = model.get_output_embeddings()
        dtype = self.logits.dtype
        weight = head.weight.to(dtype)
        bias = getattr(head, "bias", None)
        if bias is not None:
            bias = (bias / s.temperature).to(dtype)
        ban = s.eos_token_id is not None
        for layer in self.cache.layers:  # as after the prefill: the warm-up run before a capture moved them on
            layer.length = p
        self.alive.fill_(True)
        self.key_mask[:, p:] = False  # no column of the last rollout's completions is seen before it is written
        hidden = self.hidden
        for t in range(s.max_new_tokens):
            if t:
                column = p + t - 1  # the token drawn at step t - 1
                hidden = model.base_model(input_ids=self.ids[:, column : column + 1], attention_mask=self._step_mask(),
                                          position_ids=self.last_position + t, past_key_values=self.cache,
                                          use_cache=True).last_hidden_state[:, -1]
            step_logits = self.logits[t if s.keep_logits else 0]
            with torch.autocast(hidden.device.type, enabled=False):
                # (h / T) W^T = z / T: the logits of the distribution sampled
                project_head((hidden / s.temperature if s.temperature != 1 else hidden).to(dtype), weight, bias,
                             step_logits)
            if ban and t < s.min_new_tokens:
                ban_eos_(step_logits, s.eos_token_id)
            token, self.lse[t] = draw_tokens(step_logits, self.vocab, self.uniforms[t], kernels)
            token = torch.where(self.alive, token, s.pad_token_id)
            self.ids[:, p + t] = token
            self.key_mask[:, p + t] = self.alive  # tokens after EOS are padding: masked out everywhere
            self.completion[:, t] = self.alive
            if s.stop_at_eos and ban:
                self.alive &= token != s.eos_token_id
                if early_break and not self.alive.any():
                    return t + 1
        return s.max_new_tokens

    def replay(self, model) -> None:
        """The decode loop by CUDA graph: warmed up and captured on first use, replayed after."""
        device = self.ids.device
        if self.graph is None:
            with torch.cuda.device(device):
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream), _run_autocast(device.type):
                    self.decode(model, EAGER_KERNELS, early_break=False)  # lazy initialisations, workspaces: off the graph
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"), _run_autocast(device.type):
                    self.decode(model, EAGER_KERNELS, early_break=False)
            self.graph = graph
        with torch.cuda.device(device):
            self.graph.replay()

    def rollout(self, model, steps: int) -> Rollout:
        s, p = self.spec, self.prompt_len
        # the steps in which some row was still going (every step but trailing ones after all rows ended)
        n = int(self.completion[:, :steps].any(0).sum()) if s.stop_at_eos and s.eos_token_id is not None else steps
        own = torch.clone if self.graphed else (lambda x: x)  # the next replay overwrites a graph's buffers
        rollout = Rollout(own(self.ids[:, : p + n]), self.key_mask[:, : p + n].long(), p,
                          self.completion[:, :n].long(), s.temperature, s.min_new_tokens, s.eos_token_id)
        if s.keep_logits:
            logits = self.logits[:n]
            if self.graphed:
                logits = reserved_buffer(logits.shape, logits.dtype, logits.device).copy_(logits)
            rollout.logits, rollout.logsumexp = logits, own(self.lse[:n].T)
            rollout.sampler = (weakref.ref(model), _param_versions(model))
        return rollout


@contextlib.contextmanager
def _run_autocast(device_type: str):
    """Autocast as the caller has it, with a cache of cast weights that holds only the casts made within: a graph
    captured in it casts each weight once per replay (at its first use, from the weight's current values) instead
    of at every step, and never reads a cast made before the capture (freed when the caller's region ends).
    Emptied on exit: a cast made in a capture is filled only by replays, never to be read by eager code."""
    torch.clear_autocast_cache()
    try:
        with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                            enabled=torch.is_autocast_enabled(device_type), cache_enabled=True):
            yield
    finally:
        torch.clear_autocast_cache()


# model -> (its parameters' and buffers' addresses, {key: _Decoder}): graphs are valid for those addresses
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _storage_key(model) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


def _decoder(model, rows: int, prompt_len: int, spec: _Spec, dtype: torch.dtype, device: torch.device) -> _Decoder:
    """The graphed decoder of this model and shape, made (and later captured) on first use."""
    storage = _storage_key(model)
    known = _DECODERS.get(model)
    if known is None or known[0] != storage:  # new model, or weights given new storage: capture afresh
        known = (storage, collections.OrderedDict())
        _DECODERS[model] = known
    autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
    key = (rows, prompt_len, spec, dtype, str(device), autocast, internals.attention_implementation(model))
    decoders = known[1]
    if key not in decoders:
        decoders[key] = _Decoder(model, rows, prompt_len, spec, dtype, device, graphed=True)
        while len(decoders) > MAX_DECODERS:
            decoders.popitem(last=False)
    decoders.move_to_end(key)
    return decoders[key]


def _graphable(model, device: torch.device) -> bool:
    """Graphs need CUDA, unsharded weights (FSDP gathers them per call) and an attention taking a 4D mask."""
    return (device.type == "cuda" and getattr(model, "shards", None) is None
            and internals.attention_implementation(model) in ("sdpa", "eager"))


def _left_pad_to(ids: torch.Tensor, mask: torch.Tensor, multiple: int, pad_token_id: int):
    width = -(-ids.shape[1] // multiple) * multiple
    if width == ids.shape[1]:
        return ids, mask
    extra = width - ids.shape[1]
    return (torch.nn.functional.pad(ids, (extra, 0), value=pad_token_id),
            torch.nn.functional.pad(mask, (extra, 0), value=0))


def _uniform_block(steps: int, rows: int, generator: torch.Generator | None, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """[steps, rows, 1] uniforms in [0, 1) for the whole rollout, in one draw from `generator` on its own device
    (a CPU generator, the training module's, draws the same stream for a model on any device). On CPU this is
    the stream of one [rows, 1] draw per step."""
    where = generator.device if generator is not None else device
    return torch.rand(steps, rows, 1, generator=generator, dtype=dtype, device=where).to(device)


@gathers_weights(all_blocks=True)
@torch.no_grad()
def sample(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
    min_new_tokens: int = 0,
    cuda_graphs: bool = True,
    pad_prompts_to: int | None = None,
) -> Rollout:
    """Sample completions from softmax(logits / temperature) with a KV cache into preallocated buffers.

    EOS has probability 0 for the first `min_new_tokens` tokens (min_new_tokens = max_new_tokens: every row gets
    exactly max_new_tokens tokens); after an EOS a row is padding. With `stop_at_eos=False` an EOS is kept as an
    ordinary token. With `keep_logits=True` the rollout keeps the sampling logits (max_new_tokens x B x V floats),
    so that `completion_logprobs` of this same model, before its weights change, skips its vocabulary projection.
    On CUDA (`cuda_graphs`, unsharded model) the decode loop is a CUDA graph and prompts are left-padded to a
    multiple of GRAPH_BUCKET columns (`pad_prompts_to` sets the multiple anywhere). The uniforms of the whole
    rollout are drawn up front from `generator`: a seed gives the same tokens with or without graphs.
    """
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens={min_new_tokens} must be between 0 and max_new_tokens={max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    device = input_ids.device
    graphed = cuda_graphs and max_new_tokens > 0 and _graphable(model, device)
    ids, mask = _left_pad_to(input_ids, attention_mask, pad_prompts_to or (GRAPH_BUCKET if graphed else 1),
                             pad_token_id)
    spec = _Spec(max_new_tokens, min_new_tokens, float(temperature), eos_token_id, pad_token_id, stop_at_eos,
                 keep_logits)
    dtype = matmul_dtype(device.type, model.get_output_embeddings().weight.dtype)
    rows, prompt_len = ids.shape
    if graphed:
        decoder = _decoder(model, rows, prompt_len, spec, dtype, device)
    else:
        decoder = _Decoder(model, rows, prompt_len, spec, dtype, device, graphed=False)
    decoder.prefill(model, ids, mask)
    decoder.uniforms.copy_(_uniform_block(max_new_tokens, rows, generator, decoder.uniforms.dtype, device))
    if graphed:
        decoder.replay(model)
        steps = max_new_tokens
    else:
        steps = decoder.decode(model, KERNELS, early_break=device.type == "cpu")
    return decoder.rollout(model, steps)


def decode_texts(tokenizer, rollout) -> list[str]:
    """Prompt + completion as text (what the reward model reads), padding and EOS dropped."""
    return [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            for ids, mask in zip(rollout.input_ids, rollout.attention_mask, strict=True)]


def decode_prompts_completions(tokenizer, rollout) -> tuple[list[str], list[str]]:
    """Prompts and completions as texts, apart, with prompt + completion exactly `decode_texts` (the row decoded
    at once): the prompt is the longest start of that text that agrees with the prompt decoded alone, so a
    character whose bytes straddle the boundary belongs to the completion."""
    prompts, completions = [], []
    prompt_part = zip(rollout.input_ids[:, : rollout.prompt_len], rollout.attention_mask[:, : rollout.prompt_len],
                      strict=True)
    for text, (ids, mask) in zip(decode_texts(tokenizer, rollout), prompt_part, strict=True):
        alone = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
        differ = (i for i, (a, b) in enumerate(zip(alone, text, strict=False)) if a != b)
        cut = next(differ, min(len(alone), len(text)))
        prompts.append(text[:cut])
        completions.append(text[cut:])
    return prompts, completions
