"""Analysis: the judges that decide whether a candidate is no worse than its baseline.

Where this sits in the path of a rollout: the engine's pure ``decide`` calls ``judge`` at every
tick with the candidate's and the baseline's sums since the current split took effect
(``rollout.metrics.model.ArmTotals``) and the judge state it persisted; the ``Verdict`` says
``pass``, ``fail`` (roll back) or ``inconclusive`` (hold), whether a finished bake may advance,
and every number behind that, for the event log. Pure: no I/O, no clock, no randomness; imports
nothing below ``rollout.metrics.model`` and ``rollout.units``.

* ``spec``: ``Metric``, ``CheckSpec``, ``Policy`` (what the built-in ``policies/*.yaml`` and
  inline plan policies validate into).
* ``sequential``: the default judge, always-valid sequential tests on counts.
* ``threshold``: the Flagger/Argo-style judge (per-interval thresholds, failure counter).
* ``judge``: the entry point, ``Look``, and state (de)serialization.
* ``evidence``: the e-value arithmetic; ``observe``: reading checks' inputs from the totals;
  ``verdict``: ``Outcome``, ``CheckResult``, ``Verdict``.
* ``ab``: the A/B report at the end of a split; ``control``: a blue/green bake judged against
  the warm-up's control levels.
"""

from rollout.analysis.judge import JudgeState, Look, judge, state_from_dict
from rollout.analysis.sequential import SequentialState
from rollout.analysis.spec import METRICS, CheckSpec, Metric, MetricInfo, Policy
from rollout.analysis.threshold import ThresholdState
from rollout.analysis.verdict import CheckResult, Outcome, Verdict

__all__ = [
    "METRICS",
    "CheckResult",
    "CheckSpec",
    "JudgeState",
    "Look",
    "Metric",
    "MetricInfo",
    "Outcome",
    "Policy",
    "SequentialState",
    "ThresholdState",
    "Verdict",
    "judge",
    "state_from_dict",
]
