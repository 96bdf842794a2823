"""verl-modality: modality-aware RL post-training of omni-modal models, as a verl plugin.

Importing the package is cheap: it loads no verl, torch or Ray (reward and evaluation modules stay plain Python).
verl loads the plugin itself through its ``verl.plugins`` entry point, ``verl_modality._register``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
