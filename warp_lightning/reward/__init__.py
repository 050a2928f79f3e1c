"""The reward model: the scorer used at RL and evaluation time (scorer.py) and its Bradley-Terry training (training.py)."""
