"""The project's own exception types for what a user can fix (bad flags, bad data, corrupt records).

Entry points turn these into one `error:` line and exit code 2. They subclass ValueError so that library callers
who catch ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input that the user can fix; the message names the problem and the fix."""


class CorruptRecordError(UserError):
    """A results file (JSON, JSONL, checkpoint) cannot be read; the message names the file and what to do."""


__all__ = ["UserError", "CorruptRecordError"]
