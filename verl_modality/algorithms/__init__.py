"""MAPLE's ``mapo_stratified`` advantage estimator, as plain math (no verl trainer imports).

- :mod:`.config`: ``MapoConfig``, the ``algorithm.mapo.*`` options.
- :mod:`.difficulty`: per-tag difficulty D_M (Bernoulli KL, histogram KL to Beta(100, 1)).
- :mod:`.adaptive_weights`: ``AdaptiveWeightState``, the rolling KL history and w_M (Eq. 3-4).
- :mod:`.batch_context`: how the trainer hands per-row tags, padding flags and state to the estimator.
- :mod:`.advantage`: the estimator itself (``mapo_stratified_advantage``, registered by the plugin entry point).
- :mod:`.gradient_variance`: policy-gradient variance under stratified (MA) and pooled (MU) normalisation (§4.1).
"""
