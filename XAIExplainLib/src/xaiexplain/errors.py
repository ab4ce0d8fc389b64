"""The one base class of errors a user can cause: the CLI prints their one-sentence message and exits
non-zero, without a traceback."""


class XAIExplainError(ValueError):
    """A request that cannot be carried out because of its input; ``str(error)`` is one sentence."""
