"""What the simulated kubelet makes of each pod.

A lab controller must cope with pods that start, never start, finish, crash
and disappear. Each pod's fate is an `Outcome`, chosen by (strongest first):

1. the pod annotation ``sim.labd.io/outcome``;
2. the first matching `OutcomeRule` (namespace and pod name globs), set
   through `Rules` from Python or ``/sim/v1/rules``;
3. the kubelet's default (``run``).

Syntax of an outcome:

- ``run``: start and keep running.
- ``pending:REASON``: stay Pending; ``ErrImagePull``/``ImagePullBackOff``
  emit Failed/BackOff warning events, ``Unschedulable`` leaves the pod
  unbound with a FailedScheduling event, any other reason sets the
  container's waiting reason and a warning event with that reason.
- ``exit:SECONDS``: run, then exit 0 after SECONDS (phase Succeeded).
- ``crash:REASON[:SECONDS]``: run, then terminate with REASON
  (``OOMKilled`` exit 137, anything else exit 1) after SECONDS, default 0
  (phase Failed).
- ``vanish:SECONDS``: run, then the pod is deleted out from under its owner
  after SECONDS.
- ``unready:SECONDS``: run, but not Ready for the first SECONDS (as while a
  readiness probe has not passed), with an ``Unhealthy`` warning event.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["OUTCOME_ANNOTATION", "Outcome", "OutcomeRule", "Rules"]

OUTCOME_ANNOTATION = "sim.labd.io/outcome"

OutcomeKind = Literal["run", "pending", "exit", "crash", "vanish", "unready"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A parsed outcome.

    Parameters
    ----------
    kind
        ``run``, ``pending``, ``exit``, ``crash`` or ``vanish``.
    reason
        The pending or crash reason.
    after
        Seconds of running before the exit, crash or vanishing.
    """

    kind: OutcomeKind
    reason: str = ""
    after: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Outcome:
        """Parse the outcome syntax (see the module docstring).

        Raises
        ------
        ValueError
            On anything else.
        """
        head, _, rest = text.strip().partition(":")
        try:
            if head == "run" and not rest:
                return cls("run")
            if head == "pending" and rest:
                return cls("pending", reason=rest)
            if head == "exit":
                return cls("exit", after=float(rest or 0))
            if head == "vanish":
                return cls("vanish", after=float(rest or 0))
            if head == "unready":
                return cls("unready", after=float(rest or 0))
            if head == "crash" and rest:
                reason, _, after = rest.partition(":")
                return cls("crash", reason=reason, after=float(after or 0))
        except ValueError:
            pass
        raise ValueError(
            f"invalid outcome {text!r}: expected run, pending:REASON, exit:SECONDS, "
            "crash:REASON[:SECONDS] or vanish:SECONDS"
        )

    def __str__(self) -> str:
        if self.kind == "run":
            return "run"
        if self.kind == "pending":
            return f"pending:{self.reason}"
        if self.kind == "crash":
            return f"crash:{self.reason}:{self.after:g}"
        return f"{self.kind}:{self.after:g}"


class OutcomeRule(BaseModel):
    """Give pods whose namespace and name match these globs an outcome."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "*"
    """Glob over the pod's namespace."""
    name: str = "*"
    """Glob over the pod's name."""
    outcome: str
    """The outcome, in the annotation syntax."""

    @field_validator("outcome")
    @classmethod
    def _valid_outcome(cls, value: str) -> str:
        Outcome.parse(value)
        return value

    def matches(self, namespace: str, name: str) -> bool:
        """Return whether the rule applies to this pod."""
        return fnmatchcase(namespace, self.namespace) and fnmatchcase(name, self.name)


class Rules:
    """The ordered outcome rules the kubelet consults; the first match wins.

    Parameters
    ----------
    default
        The outcome of pods no annotation or rule speaks for.
    """

    def __init__(self, *, default: str = "run") -> None:
        self.default = Outcome.parse(default)
        """Outcome when nothing else decides."""
        self.rules: list[OutcomeRule] = []
        """The rules, in order."""

    def add(self, outcome: str, *, namespace: str = "*", name: str = "*") -> OutcomeRule:
        """Append a rule, e.g. ``add("crash:OOMKilled", name="*-nb")``.

        Raises
        ------
        pydantic.ValidationError
            For an invalid outcome.
        """
        rule = OutcomeRule(namespace=namespace, name=name, outcome=outcome)
        self.rules.append(rule)
        return rule

    def set(self, rules: list[OutcomeRule]) -> None:
        """Replace every rule."""
        self.rules = list(rules)

    def clear(self) -> None:
        """Remove every rule."""
        self.rules = []

    def decide(self, namespace: str, name: str, annotation: str | None) -> Outcome:
        """Return the outcome of a pod.

        Raises
        ------
        ValueError
            When the annotation is invalid; the kubelet logs it and decides
            again without the annotation.
        """
        if annotation is not None:
            return Outcome.parse(annotation)
        for rule in self.rules:
            if rule.matches(namespace, name):
                return Outcome.parse(rule.outcome)
        return self.default
