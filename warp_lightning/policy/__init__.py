"""The policy: loading and saving causal LMs, sampling (sampling.py), completion log-probs (logprobs.py); the vocabulary kernels (kernels.py) and FSDP gathering (sharding.py) apart."""
