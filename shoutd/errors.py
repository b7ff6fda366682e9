"""The few errors that cross shoutd's boundaries.

Every adapter (Docker plugin API, D-Bus, CLI) turns exactly these into its own
error form, so a message written once reads the same everywhere.  The `kind`
lets an adapter pick a status code or D-Bus error name without parsing text.
"""

INVALID = "invalid"          # the caller sent something wrong; retrying won't help
CONFLICT = "conflict"        # valid, but clashes with the cluster's current state
NOT_FOUND = "not_found"      # names an object the cluster does not have
UNAVAILABLE = "unavailable"  # the cluster cannot answer now (no leader, no quorum)
INTERNAL = "internal"        # a bug in shoutd; the message says where to look

# Names that callers act on (shoutdctl's exit code, a retry with the same request id).
NO_QUORUM = "NoQuorum"                # refused: nothing was changed
OUTCOME_UNKNOWN = "OutcomeUnknown"    # may or may not take effect; shoutd settles it once a majority is back


class ShoutdError(Exception):
    def __init__(self, message, kind=INVALID, name=None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.name = name       # a more precise name for D-Bus, e.g. "AlreadyMember"

    def __str__(self):
        return self.message
