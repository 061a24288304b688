"""The rules raw ids share on both sides: at most MAX_ID_LENGTH characters, and no
control characters.

An id trained on must be one the service can be asked for: the loaders refuse a longer
id, as the service does. An id is any text (surrounding spaces are ignored), but a tab, a
line end or another control character in one would be read back as more fields or more
lines by the tab-separated and line-based formats the event export writes and the loaders
read (`u.data`): one event could become several ratings. The loaders refuse such ids, the
service refuses them with a 422, and the export skips an event that holds one.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 128
# C0 and C1 controls and DEL (Unicode category Cc).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def control_character(text: str) -> str | None:
    """The first control character in `text`, escaped for a message; None when clean."""
    found = _CONTROL.search(text)
    return None if found is None else repr(found.group())[1:-1]
