"""The policy: loading and saving causal LMs, sampling (sampling.py), completion log-probs (logprobs.py); the
vocabulary-sized operations they share (vocab_ops.py) and FSDP gathering (sharding.py) apart."""
