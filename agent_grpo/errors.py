"""One typed error per boundary, under one base class.

Errors the *model* causes (bad tool calls, bad boxes) never raise: they become tool-error
observations (see `agent_grpo.tools.runner`). These exceptions are for users and code.
"""


class AgentGrpoError(Exception):
    """Base class of every error agent-grpo raises on purpose."""


class ConfigError(AgentGrpoError, ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


class ImageError(AgentGrpoError, ValueError):
    """An image could not be decoded, or breaks a size limit."""


class PluginError(AgentGrpoError):
    """A tool or environment plugin could not be found or loaded."""


class ToolError(AgentGrpoError):
    """Raised *inside* a tool to send a clear message back to the model as a tool-error observation.

    `kind` is a `ToolErrorKind` value ("bad_box", "bad_image", "invalid_arguments", ...).
    """

    def __init__(self, message: str, kind: str = "exception"):
        super().__init__(message)
        self.kind = kind


class BatchError(AgentGrpoError, ValueError):
    """A training batch is inconsistent (e.g. image tokens vs. image features); names the trajectory."""


class StoreError(AgentGrpoError):
    """A run directory or stored trajectory could not be read or written."""


class EngineError(AgentGrpoError):
    """The rollout engine failed (raised, or its process died): the run stops; stored steps are kept."""
