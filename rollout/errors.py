"""Errors that concern the whole program rather than one external system.

Each external system has its own tree (``rollout.serving.errors``, ``rollout.store.errors``,
``rollout.metrics.parse.MetricsError``); this one is for what the command line reports as a
single clear line: the program cannot start as configured.
"""


class ConfigurationProblem(Exception):  # noqa: N818 -- read as a sentence: "configuration problem"
    """The settings do not describe something that can run; the message says what to fix."""


SIGN_IN_HELP = (
    "set DATABRICKS_HOST (the workspace URL) and DATABRICKS_TOKEN (a personal access token), "
    "or DATABRICKS_HOST with DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth M2M), "
    "or a profile: DATABRICKS_CONFIG_PROFILE names one in DATABRICKS_CONFIG_FILE "
    "(default ~/.databrickscfg, profile DEFAULT), such as one `databricks auth login` writes "
    "(with rollout[databricks]); to try rollout without a workspace, run "
    "rollout demo --keep"
)


def with_sign_in_help(message: str) -> str:
    """A sign-in problem with the variables and profile options to set (once)."""
    if SIGN_IN_HELP in message:
        return message
    return f"{message}\n  {SIGN_IN_HELP}"
