"""Offline moderation of prompts and generated text, English and Chinese: block lists, allow lists
and personal data. `Moderator(ModerationConfig()).check(text, where="prompt")` -> `Verdict`.
The bundled lists, their source and licence: `lists/README.md`."""

from genforge.moderation.config import BUNDLED, ModerationConfig
from genforge.moderation.moderator import Moderator, Verdict, moderate_samples

__all__ = ["BUNDLED", "ModerationConfig", "Moderator", "Verdict", "moderate_samples"]
