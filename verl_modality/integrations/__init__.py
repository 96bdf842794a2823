"""Where the plugin meets verl, vLLM, transformers and Ray: every change to their internals is declared in
:mod:`verl_modality.integrations.registry` and applied by :mod:`verl_modality.integrations.import_hooks`."""
