"""Where the plugin meets verl, vLLM, transformers and Ray: every change to their internals is declared in
:mod:`verl_modality.integrations.registry`, made through :mod:`verl_modality.integrations.patching` and applied on
its target's import by :mod:`verl_modality.integrations.import_hooks`."""
