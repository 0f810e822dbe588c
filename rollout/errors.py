"""Errors that concern the whole program rather than one external system.

Each external system has its own tree (``rollout.serving.errors``, ``rollout.store.errors``,
``rollout.metrics.parse.MetricsError``); this one is for what the command line reports as a
single clear line: the program cannot start as configured.
"""


class ConfigurationProblem(Exception):  # noqa: N818 -- read as a sentence: "configuration problem"
    """The settings do not describe something that can run; the message says what to fix."""
