"""The process plumbing every command shares: stop signals and child processes (`signals.py`, whose state is one
object, `signals.PROCESS`), stop-and-resume checkpoints (`resume.py`), one command per run folder (`lock.py`) and
every use of a private internal of Lightning, torch or transformers (`internals.py`)."""
