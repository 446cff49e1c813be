"""``python -m labd.sim``: the same as ``labd sim``."""

from labd.sim.command import sim

sim(prog_name="python -m labd.sim")
