"""Errors raised by the edge agent.

    EdgeAgentError
     ├── AgentConfigError     the agent's config file or arguments are invalid
     └── OutboxError          the durable outbox cannot be opened or written
    (collectors have their own tree under edge_agent.collectors.errors.CollectorError)
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of the edge agent's own errors."""


class AgentConfigError(EdgeAgentError):
    """The agent configuration is invalid; the message names the file, line and key."""


class OutboxError(EdgeAgentError):
    """The durable outbox cannot be opened or written."""
