"""A member's plan (models.plan) is made once per member and handed to every unit: its input spec
is resolved once, and frozen / fine-tune / probe go through the plan's strategy."""
from __future__ import annotations

import pytest

pytest.importorskip("keras")

from fashion_stack.core.config import PipelineConfig  # noqa: E402
from fashion_stack.models import backbones, embeddings, heads, plan, stage, trainer  # noqa: E402
from fashion_stack.models.plan import MemberPlan, PlanError, resolve_plan  # noqa: E402
from fashion_stack.models.stage import STRATEGIES, MembersError, run_member, load_stage_data  # noqa: E402
from models_synthetic import make_run, tiny_member  # noqa: E402


def test_the_plan_holds_the_resolved_input_and_the_requests():
    member = tiny_member("m", input_size=(48, 32), resize="crop", mixed_precision="off", data_parallel="off",
                         unit_gpus=0.5)
    made = resolve_plan(member)
    assert (made.name, made.strategy) == ("m", "finetune")
    assert (made.input.height, made.input.width, made.input.resize, made.input.preprocess_style) == (48, 32, "crop", "tf")
    assert (made.precision, made.devices, made.resources.gpus) == ("off", "off", 0.5)
    native = resolve_plan(tiny_member("n", input_size=None))
    assert (native.input.height, native.input.width) == (64, 64)  # tiny_cnn's native size


def test_a_probe_plan_holds_its_probed_members_plans_and_no_input():
    config = PipelineConfig(members=[tiny_member("a", mode="frozen", input_size=24), tiny_member("b", mode="frozen"),
                                     tiny_member("p", mode="probe", probe_of=["b", "a"])])
    made = resolve_plan(config.members[2], config)
    assert made.input is None and [p.name for p in made.probed] == ["b", "a"]
    assert made.probed[1].input.size == 24 and all(isinstance(p, MemberPlan) for p in made.probed)
    with pytest.raises(PlanError, match="needs the config"):
        resolve_plan(config.members[2])


def test_an_unknown_mode_is_refused_when_the_member_starts(tmp_path):
    ctx = make_run(tmp_path, n_train=8, n_validation=4, n_test=2, k=2)
    member = tiny_member("odd")
    member.mode = "distil"
    ctx.config.members = [member]
    with pytest.raises(MembersError, match="mode 'distil'; use one of"):
        run_member(ctx, member, load_stage_data(ctx))


@pytest.fixture
def spied(monkeypatch):
    """Counts resolve_input_spec calls per member, wherever a module holds the function."""
    calls = []
    original = backbones.resolve_input_spec

    def spy(member):
        calls.append(member.name)
        return original(member)
    for module in (backbones, plan, heads, trainer, embeddings, stage):
        if hasattr(module, "resolve_input_spec"):
            monkeypatch.setattr(module, "resolve_input_spec", spy)
    return calls


@pytest.fixture
def dispatched(monkeypatch):
    """Records which strategy ran each step, by wrapping every registered strategy's methods."""
    seen = []
    for name, strategy in STRATEGIES.items():
        for method in ("shared_tasks", "unit_inputs", "fit_predict"):
            bound = getattr(strategy, method)

            def wrapper(*args, _bound=bound, _name=name, _method=method, **kwargs):
                seen.append((_name, _method))
                return _bound(*args, **kwargs)
            monkeypatch.setattr(strategy, method, wrapper)
    return seen


def test_each_member_resolves_its_input_once_and_runs_through_its_strategy(tmp_path, spied, dispatched):
    ctx = make_run(tmp_path, n_train=16, n_validation=0, n_test=4, k=3, pool="train")
    ctx.config.members = [tiny_member("ft", finetune_epochs=1, head_epochs=0),
                          tiny_member("fr", mode="frozen", frozen_epochs=1),
                          tiny_member("pr", mode="probe", probe_of=["fr"], probe_c=[0.1])]
    data = load_stage_data(ctx)
    for member in ctx.config.members:
        spied.clear(), dispatched.clear()
        summary = run_member(ctx, member, data)
        assert summary["units_trained"] == 3
        # once for the member (the probe: once for the member whose embeddings it reads)
        assert spied == (["fr"] if member.mode == "probe" else [member.name]), member.name
        assert dispatched == [(member.mode, "shared_tasks")] + [(member.mode, "unit_inputs"),
                                                                 (member.mode, "fit_predict")] * 3
    # a second run plans again but trains nothing
    spied.clear(), dispatched.clear()
    assert run_member(ctx, ctx.config.members[0], data)["units_trained"] == 0
    assert spied == ["ft"] and dispatched == []


def test_every_mode_the_config_accepts_has_one_registered_strategy():
    from typing import get_args, get_type_hints

    from fashion_stack.core.config import MemberConfig
    from fashion_stack.models.plan import STRATEGY_NAMES
    assert set(STRATEGIES) == set(STRATEGY_NAMES) == set(get_args(get_type_hints(MemberConfig)["mode"]))
    with pytest.raises(ValueError, match="registered twice"):
        STRATEGIES.add("frozen", STRATEGIES["frozen"])
