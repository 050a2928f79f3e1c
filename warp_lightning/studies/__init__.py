"""Studies: an experiment as a named set of independent, resumable jobs (conf/study/NAME.yaml) whose results land
in the repository as data (`results.py`), and whose report and verdicts are recomputed from whatever has landed
(`verdicts.py`). `jobs.py` declares the jobs and their state; `command.py` is the `study` command."""
