"""`study action=build`: the models a study's jobs build on first use, read from the jobs' own commands, and built
as those commands would build them."""

from pathlib import Path

from hydra import initialize_config_dir
from omegaconf import OmegaConf

from warp_lightning import builds
from warp_lightning.cli import CONF_DIR
from warp_lightning.studies.models import describe_needed, needed_models


def needed(name: str, models_dir: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return needed_models(OmegaConf.load(CONF_DIR / "study" / f"{name}.yaml"), [f"paths.models_dir={models_dir}"])


def test_the_smollm2_study_needs_its_sft_policy_and_the_reward_model(tmp_path):
    found = needed("smollm2", tmp_path)
    assert [(m.key, m.path, m.choice, m.arms) for m in found] == [
        ("policy", tmp_path / "sft_smollm2", "sft_smollm2", ("warp", "ema_anchor", "sft_anchor")),
        ("reward_model", tmp_path / "reward_minilm_rt", "minilm_rt", ("warp", "ema_anchor", "sft_anchor"))]
    (tmp_path / "sft_smollm2").mkdir()
    assert describe_needed(found).splitlines()[0].startswith("cached   policy")
    assert describe_needed(found).splitlines()[1].startswith("missing  reward_model")


def test_warm_is_built_as_the_arm_that_chose_it_builds_it_not_as_a_sums_term(tmp_path):
    """The single arm's front names WARM first, as the term `reward_model.terms.warm` (no choice of its own); the
    warm arm's train chose `reward_model=minilm_rt_warm`: the build is that one, its build overrides included."""
    found = {m.path.name: m for m in needed("warm", tmp_path)}
    assert set(found) == {"sft_gpt2", "reward_minilm_rt", "reward_minilm_rt_warm"}  # the reward arms build their own
    warm = found["reward_minilm_rt_warm"]
    assert (warm.key, warm.choice, warm.arms) == ("reward_model", "minilm_rt_warm", ("single", "warm"))
    cmd = builds.build_command(warm.key, warm.config, warm.path, None, warm.choice)
    assert cmd[3:6] == ["reward", f"save_to={warm.path}", "reward_model=minilm_rt_warm"]
    assert "reward_training.ensemble=4" in cmd
