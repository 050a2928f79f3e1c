"""The end of a command tells its result: `train`'s table of SFT against the final policy with the paired gains,
and for the other commands their rounded figures; both say where the outputs are."""

from pathlib import Path

from warp_lightning.train.loop import result_lines
from warp_lightning.utils.console import figures_line


def test_train_ends_with_its_result_table_and_paths():
    metrics = {"sft_reward_mean": 0.2821, "final_reward_mean": 0.75, "sft_judge_mean": 0.416, "final_judge_mean": 0.691,
               "sft_kl_mean": 0.0, "final_kl_mean": 9.384, "sft_completion_length_mean": 24.0,
               "final_completion_length_mean": 24.0, "reward_gain": 0.468, "reward_gain_low": 0.421,
               "reward_gain_high": 0.515, "judge_gain": 0.275, "judge_gain_low": 0.236, "judge_gain_high": 0.313,
               "eval_prompts": 200, "eval_split": "validation"}
    text = result_lines(metrics, Path("/runs/x"))
    lines = text.splitlines()
    assert lines[0].startswith("train: 200 validation prompts")
    assert lines[2].split() == ["sft", "0.282", "0.416", "0.00", "24.0"]
    assert lines[3].split() == ["final", "0.750", "0.691", "9.38", "24.0"]
    assert "proxy +0.468 [+0.421, +0.515], judge +0.275 [+0.236, +0.313]" in lines[4]
    assert "/runs/x/final (the final policy)" in lines[5] and "/runs/x/metrics.json" in lines[5]


def test_other_commands_end_with_their_rounded_figures():
    text = figures_line("reward", {"val_pair_accuracy": 0.868123456, "steps": 192, "members": [1, 2], "ok": True},
                        Path("/runs/r"))
    assert text.splitlines() == ["reward: val_pair_accuracy 0.8681, steps 192", "written: /runs/r/metrics.json"]
