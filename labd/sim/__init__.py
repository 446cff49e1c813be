"""A simulated Kubernetes cluster for labd's development, tests and benchmarks.

Kubernetes cannot run where labd is developed, yet labd must be exercised
against Kubernetes semantics through its real client. This package is
labd's stand-in, in the spirit of envtest and KWOK: an API server speaking
the Kubernetes REST API over HTTP (`SimCluster`), a namespace controller, a
kubelet stand-in that is itself a Kubernetes client (`Kubelet`) with the
images its node holds (`NodeImages`), fault injection (`Faults`) and pod
outcome rules (`Rules`). See ``docs/sim.md``.
"""

from labd.sim.cluster import SimCluster
from labd.sim.faults import Faults, FaultSpec, Stats
from labd.sim.images import NodeImages
from labd.sim.kubeconfig import write_kubeconfig
from labd.sim.kubelet import Kubelet
from labd.sim.outcomes import OUTCOME_ANNOTATION, Outcome, OutcomeRule, Rules

__all__ = [
    "OUTCOME_ANNOTATION",
    "FaultSpec",
    "Faults",
    "Kubelet",
    "NodeImages",
    "Outcome",
    "OutcomeRule",
    "Rules",
    "SimCluster",
    "Stats",
    "write_kubeconfig",
]
