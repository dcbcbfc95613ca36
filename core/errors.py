"""EventOps exception tree.

    EventOpsError
    ├── ConfigError        bad configuration (rules file, settings): raised, never repaired
    ├── ServiceError       a required service (Kafka, PostgreSQL) is unreachable or refused
    └── NotFound           a requested object does not exist (mapped to HTTP 404)

Bad *input events* are not exceptions: they become DLQ records with a reason code
(see :mod:`pipeline.stages.normalize`).
"""


class EventOpsError(Exception):
    """Base of every error EventOps raises on purpose."""


class ConfigError(EventOpsError):
    """Configuration is invalid; the message says which field and why."""


class ServiceError(EventOpsError):
    """Kafka or PostgreSQL could not be reached or refused the operation."""


class NotFound(EventOpsError):
    """The requested object does not exist (or belongs to another tenant)."""
