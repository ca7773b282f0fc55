"""A member's plan: what the members stage works out once per member from its config, then hands
to every unit, instead of each part (devices, backbones, heads, inputs) re-deriving it from the
whole config.

- strategy: how the member learns. "finetune" (trunk + head on images, two phases), "frozen"
  (the trunk's embeddings once, a head per fold on them), "probe" (a logistic regression per
  label on other frozen members' embeddings). models.stage.STRATEGIES holds one per name.
- input: the InputSpec (height, width, resize policy, preprocessing), resolved here and nowhere
  else for the member's run (models.backbones.resolve_input_spec); None for a probe, which sees
  no images.
- precision and devices: the member's requests (mixed_precision, data_parallel), resolved to a
  dtype policy and devices where the unit runs (models.devices.resolve_placement), since an
  executor may place units on other machines.
- resources: what each unit asks an executor for; child: the local engine's child process its
  units share (hardware.isolation "member": the member's name), or None (the driver's process).
- probed: the plans of the members a probe reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fashion_stack.core.config import MemberConfig
from fashion_stack.core.executor import Resources
from fashion_stack.models import backbones
from fashion_stack.models.backbones import InputSpec


class PlanError(ValueError):
    """A member whose plan cannot be made (an unknown strategy, a probe naming no frozen member)."""


STRATEGY_NAMES = ("finetune", "frozen", "probe")  # the member config's `mode`


@dataclass(frozen=True)
class MemberPlan:
    member: MemberConfig  # the settings the strategy's trainer reads (schedule, head, loss, reader)
    strategy: str  # one of STRATEGY_NAMES
    input: Optional[InputSpec]  # None for a probe
    precision: str  # the requested mixed precision ("auto", "bfloat16", "float16", "off")
    devices: str  # the requested data parallelism ("auto", "on", "off")
    resources: Resources  # what one unit asks an executor for
    probed: tuple = ()  # MemberPlans of the frozen members a probe reads
    child: Optional[str] = None  # Task.child of the member's units: its name when isolated, else None

    @property
    def name(self) -> str:
        return self.member.name


def resolve_plan(member: MemberConfig, config=None) -> MemberPlan:
    """The member's plan, made once per member by the members stage. `config` (the PipelineConfig)
    is read only for a probe's probed members."""
    if member.mode not in STRATEGY_NAMES:
        raise PlanError(f"member {member.name!r}: mode {member.mode!r}; use one of {STRATEGY_NAMES}")
    probed = ()
    if member.mode == "probe":
        if config is None:
            raise PlanError(f"member {member.name!r}: a probe's plan needs the config that holds its probed members")
        probed = tuple(resolve_plan(config.member(name)) for name in member.probe_of)
    spec = None if member.mode == "probe" else backbones.resolve_input_spec(member)
    return MemberPlan(member, member.mode, spec, member.hardware.mixed_precision, member.hardware.data_parallel,
                      Resources(cpus=member.hardware.unit_cpus, gpus=member.hardware.unit_gpus), probed,
                      member.name if member.hardware.isolation == "member" else None)


def accumulation_steps(member: MemberConfig) -> int:
    """Micro-batches per optimizer step (hardware.micro_batch_size): 1 without accumulation."""
    micro = member.hardware.micro_batch_size
    return 1 if micro is None else max(1, member.batch_size // micro)
