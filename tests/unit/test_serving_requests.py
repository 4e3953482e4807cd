"""The request rules and the conditioning rules, without a model: one rule, spelled per front end."""
import math

import pytest
import torch

from ldm_system.models.conditioning import Conditioning, per_image
from ldm_system.models.unet import UNetConfig
from ldm_system.serving.cli import CLI
from ldm_system.serving.requests import (API, HTTP, EditRequest, InterpolateRequest, InvertRequest, Limits,
                                         SampleRequest, SDEditRequest, edit_or_sdedit)

SERVER = Limits(max_steps=20, max_batch=4, max_fixed_point_iters=5, max_null_opt_steps=5, max_guidance=30.0)


@pytest.mark.parametrize("names, limits, message", [
    (API, Limits(), "steps must be positive, got 0"),
    (CLI, Limits(), "--steps must be positive, got 0"),
    (HTTP, SERVER, "steps must lie in 1..20 (server limit), got 0"),
])
def test_one_rule_three_spellings(names, limits, message):
    with pytest.raises(ValueError) as e:
        SampleRequest(num=1, steps=0).check(limits, names)
    assert str(e.value) == message


def test_null_optimization_preconditions_name_the_front_ends_inputs():
    bad = InvertRequest(steps=4, guidance=3.0, null_optimization=True)  # no class, no prompt
    for names, start in ((API, "null-condition inversion needs classes"), (CLI, "--null-opt needs --class"),
                         (HTTP, "null_optimization needs classes")):
        with pytest.raises(ValueError, match=f"^{start}"):
            bad.check(names=names)
    with pytest.raises(ValueError, match="needs"):
        InvertRequest(classes=[1], steps=4, null_optimization=True).check()  # guidance 1: nothing to fit
    with pytest.raises(ValueError, match=r"steps \(with null_optimization\) must lie in 1..5"):
        InvertRequest(classes=[1], steps=6, guidance=3.0, null_optimization=True).check(SERVER, HTTP)
    InvertRequest(classes=[1], steps=4, guidance=3.0, null_optimization=True).check(SERVER, HTTP)


@pytest.mark.parametrize("request_, message", [
    (SampleRequest(guidance=math.nan), "guidance must be a finite number >= 0, got nan"),
    (SampleRequest(eta=math.inf), "eta must be a finite number >= 0, got inf"),
    (SampleRequest(sampler="euler"), "unknown sampler 'euler'"),
    (SampleRequest(num=2, classes=[1, 2], prompts=["a", "b"]), "give classes (class-conditional models) or prompts"),
    (InvertRequest(null_lr=math.nan), "null_lr must be a finite number > 0, got nan"),
    (InvertRequest(fixed_point_iters=-1), "fixed_point_iters must be at least 0, got -1"),
    (SDEditRequest(strength=math.nan), "strength must lie in [0, 1], got nan"),
    (SDEditRequest(target_class=1, target_prompt="a bag"), "give target_class (class-conditional models) or"),
    (InterpolateRequest(num=1), "num must be at least 2, got 1"),
    (EditRequest(source_class=0, target_class=1, steps=10, keep_steps=11), r"keep_steps must lie in [0, steps=10], got 11"),
    (EditRequest(source_class=0, target_prompt="a bag"), "give source_class/target_class (class models) or"),
])
def test_requests_refuse_bad_values(request_, message):
    with pytest.raises(ValueError) as e:
        request_.check()
    assert str(e.value).startswith(message), str(e.value)


def test_edit_rules_that_need_the_model_kind():
    with pytest.raises(ValueError, match="this model is text-conditional; edit with source_prompt/target_prompt"):
        EditRequest(source_class=0, target_class=1).check(kind="text")
    with pytest.raises(ValueError, match="this model is not text-conditional; edit with source_class/target_class"):
        EditRequest(target_prompt="a bag").check(kind="class")
    with pytest.raises(ValueError, match="unconditional; try sdedit"):
        EditRequest(source_class=0, target_class=1).check(kind="none")
    with pytest.raises(ValueError, match="a text edit needs target_prompt"):
        EditRequest().check(kind="text")
    with pytest.raises(ValueError, match="a class edit needs source_class and target_class"):
        EditRequest(source_class=0).check(kind="class")
    EditRequest(target_prompt="a bag").check()  # kind unknown yet (the CLI before loading): passes


def test_edit_or_sdedit_picks_the_mode():
    common = dict(source_class=None, source_prompt=None, target_prompt=None, steps=10, guidance=1.0, seed=0)
    sd = edit_or_sdedit(target_class=1, keep_steps=None, strength=0.5, **common)
    assert isinstance(sd, SDEditRequest) and sd.strength == 0.5
    ed = edit_or_sdedit(**{**common, "source_class": 0}, target_class=1, keep_steps=2, strength=None)
    assert isinstance(ed, EditRequest) and ed.keep_steps == 2
    with pytest.raises(ValueError, match=r"^--strength must lie in \(0, 1\], got 0"):
        edit_or_sdedit(target_class=1, keep_steps=None, strength=0.0, names=CLI, **common)
    with pytest.raises(ValueError, match="give keep_steps .* or strength .*, not both"):
        edit_or_sdedit(target_class=1, keep_steps=1, strength=0.5, names=HTTP, **common)
    with pytest.raises(ValueError, match="give exactly one of target_class"):
        edit_or_sdedit(target_class=None, keep_steps=None, strength=0.5, names=HTTP, **common)


def test_arguments_are_the_pipeline_keywords():
    assert SampleRequest(num=2, seed=3).arguments() == dict(num=2, classes=None, prompts=None, sampler="ddim",
                                                           steps=50, eta=0.0, guidance=1.0, seed=3, height=None,
                                                           width=None)


# ---- conditioning ---------------------------------------------------------------------------------
CLASS_UNET = UNetConfig(sample_size=4, in_channels=3, block_out_channels=(16, 32), attention_levels=(False, False),
                        layers_per_block=1, norm_num_groups=8, conditioning="class", num_classes=3)


def test_per_image_is_one_value_for_all_or_one_each():
    assert per_image("a", 3, "prompts") == ["a"] * 3
    assert per_image([1], 2, "classes") == [1, 1]
    assert per_image([1, 2], 2, "classes") == [1, 2]
    assert per_image(None, 2, "classes") is None
    with pytest.raises(ValueError, match=r"^prompts: give one prompt or one per image \(2\), got 3$"):
        per_image(["a", "b", "c"], 2, "prompts", "prompt")


def test_class_conditioning_ids_null_and_guidance():
    c = Conditioning.of(CLASS_UNET, ["Hat", "Bag", "Shoe"])
    assert c.condition(["Bag", "2", 0], None, 3).tolist() == [1, 2, 0]
    assert c.condition(None, None, 2).tolist() == [3, 3]  # the null class K
    assert c.cycle_classes(5) == [0, 1, 2, 0, 1]
    g = c.guidance(3.0, torch.tensor([1]))
    assert g.scale == 3.0 and g.null_cond.tolist() == [3]
    assert c.guidance(1.0, torch.tensor([1])) is None
    with pytest.raises(ValueError, match="unknown class 'Cap'; known classes: Hat, Bag, Shoe"):
        c.class_id("Cap")
    with pytest.raises(ValueError, match=r"class ids are 0\.\.2"):
        c.class_id(3)
    with pytest.raises(ValueError, match="this model is not text-conditional; pass classes, not prompts"):
        c.condition(None, ["a bag"], 1)
    with pytest.raises(ValueError, match="got 2 classes for 3 images"):
        c.condition([0, 1], None, 3)


def test_unconditional_model_takes_no_classes():
    c = Conditioning.of(UNetConfig(sample_size=4, in_channels=3, block_out_channels=(16, 32),
                                   attention_levels=(False, False), layers_per_block=1, norm_num_groups=8))
    assert c.condition(None, None, 2) is None and c.null() is None and c.guidance(3.0, None) is None
    with pytest.raises(ValueError, match="this model is not class-conditional; do not pass classes"):
        c.condition([0], None, 1)
