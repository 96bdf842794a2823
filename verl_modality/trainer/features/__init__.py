"""The features :class:`~verl_modality.trainer.modality_trainer.ModalityTrainerSync` is composed of, one per module.

Each is built from the run's config, says whether it acts (``enabled``), and works on one step's batch through a
store with TransferQueue's ``kv_batch_get`` / ``kv_batch_put`` / ``kv_clear`` (the ``transfer_queue`` module in
training; an in-memory one in the tests), so each can be tested without Ray:

* :mod:`.tag_flow`: each row's modality tag to the estimator, the adaptive-weight history, per-tag training metrics;
* :mod:`.tag_validation`: per-tag validation accuracy, levels, modality gap, strata;
* :mod:`.curriculum_steps`: one tag per batch from the tag curriculum;
* :mod:`.mapo_at_pass`: MAPO-AT's audio-ablated pass and the attention loss's inputs;
* :mod:`.failed_rewards`: zero advantage for samples whose reward failed;
* :mod:`.group_filter`: verl's group filter sees failed rewards neutralised, and a metric it can compare;
* :mod:`.state`: what the features keep in verl's checkpoints.
"""
