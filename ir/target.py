"""The target of a compile: a machine, a chip count and the network joining those chips.

The compile driver builds one Target per chip count it compiles for and passes it
to every stage (partition, lowering, allocation, scheduling). A lowered module
records its chip count (module attribute `chips`, absent for one chip: the one
truth) and its machine's name, so every reader of a scheduled program (the .lpu
writer and loader, hence the interpreter, the trace, the report) rebuilds the same
Target with `Target.of(module, machine)`. The network is built when a route is
first needed, once per machine and size (`ir.topology.network` is memoized).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .core import Module
from .errors import LpucError
from .machine import Machine
from .topology import Network, check_chips, network, supported_chips


@dataclass(frozen=True)
class Target:
    machine: Machine
    chips: int = 1

    def __post_init__(self):
        check_chips(self.machine, self.chips)

    @cached_property
    def network(self) -> Network:
        """The chips' links and routes (built on first use: a large machine's cabling is big)."""
        return network(self.machine, self.chips)

    @property
    def lanes(self) -> int:
        return self.machine.lanes

    @classmethod
    def of(cls, module: Module, machine: Machine) -> Target:
        """The target `module` (lowered for a machine) was compiled for: `machine` on the module's chips.
        An LpucError when the module names another machine or a chip count the machine cannot have."""
        recorded = module.attrs.get("machine")
        if recorded is not None and recorded != machine.name:
            raise LpucError(f"module @{module.name} targets machine {recorded!r}, the description given is "
                            f"{machine.name!r}")
        chips = module.attrs.get("chips", 1)
        if type(chips) is not int or not supported_chips(machine, chips):
            raise LpucError(f"module @{module.name} is for {chips!r} chips, which a {machine.name} "
                            f"{machine.topology.kind} cannot have")
        return cls(machine, chips)
