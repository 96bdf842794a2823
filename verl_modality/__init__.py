"""verl-modality: modality-aware RL post-training of omni-modal models, as a verl plugin."""

# Importing verl first runs its plugin discovery, which imports our entry point (``verl_modality._register``)
# before any of our modules that register into verl. Without this, importing e.g. an algorithm module directly
# would re-enter it half-initialised through verl's discovery, and verl would swallow the resulting error.
import verl  # noqa: F401

__version__ = "0.1.0"

# Canonical stream order and the seven required-modality tags (SPEC section 1).
STREAMS = ("V", "A", "S")
TAGS = ("V", "A", "S", "VA", "VS", "AS", "VAS")
