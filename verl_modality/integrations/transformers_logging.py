"""Changes to ``transformers.configuration_utils``: its log loses the talker token-id warnings of Qwen2.5-Omni.

The talker's text-token ids index the *thinker's* vocabulary by design. transformers 5.9 checks them against the
talker's own (8,448 codes) whenever it formats a ``Qwen2_5OmniConfig`` type check, which builds a default talker
config: seven warnings per process about ids no checkpoint holds.
"""

from __future__ import annotations

import logging
import re

from verl_modality.integrations.patching import MARK

_TALKER_TOKEN_WARNING = re.compile(
    r"^Model config: (tts_text_(start|end|pad)|audio_(start|end)|vision_(start|end))_token_id must be `None` or an "
    r"integer within the vocabulary"
)


class TalkerTokenIdFilter(logging.Filter):
    """Drops transformers' vocabulary warnings about the talker's thinker-vocabulary token ids (and nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _TALKER_TOKEN_WARNING.match(record.getMessage())


setattr(TalkerTokenIdFilter, MARK, True)  # the plugin's object in the logger's filters (`verl-modality doctor`)


def quiet_talker_token_ids(module) -> None:
    """Add :class:`TalkerTokenIdFilter` to the logger of ``transformers.configuration_utils`` (``module.logger``),
    once."""
    log = module.logger
    if not any(isinstance(f, TalkerTokenIdFilter) for f in log.filters):
        log.addFilter(TalkerTokenIdFilter())
