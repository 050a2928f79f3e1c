"""The etas rule of `front` is written once (eval/checks.py, run once by front's record before it starts), with its
bound as a parameter."""

import pytest
from omegaconf import OmegaConf

from warp_lightning import UserError
from warp_lightning.eval.checks import MAX_ETA, check_etas


def etas(values, linear=()):
    return OmegaConf.create({"etas": list(values), "linear_etas": list(linear)})


@pytest.mark.parametrize(("cfg", "line"), [
    (etas([0, 0.5, 2.5]), "etas=[0, 0.5, 2.5] is invalid: give values in [0, 2]"),
    (etas([-0.1]), "etas=[-0.1] is invalid: give values in [0, 2]"),
    (etas([]), "etas=[] is invalid: give values in [0, 2]"),  # a front needs at least one point
    (etas([0.5], linear=[3]), "linear_etas=[3] is invalid: give values in [0, 2]"),
])
def test_the_config_check_refuses_etas_out_of_range_in_one_line(cfg, line):
    with pytest.raises(UserError) as err:
        check_etas(cfg)  # front's check (its record's), run once before it reads a run or loads a model
    assert str(err.value) == line


def test_the_bound_is_a_parameter():
    assert MAX_ETA == 2.0  # eta > 1: ExPO's extrapolation beyond theta_slerp
    check_etas(etas([0, 0.5, 1.0, 1.5, 2.0], linear=[1.5]))
    check_etas(etas([0, 0.5]), top=0.5)
    with pytest.raises(UserError, match=r"^etas=\[1.5\] is invalid: give values in \[0, 1\]$"):
        check_etas(etas([1.5]), top=1.0)
