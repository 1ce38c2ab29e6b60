"""``CheckpointStrategy``: the checkpoint policy, which is the job's ``checkpoint`` section.

One class under two names (``CheckpointStrategy is CheckpointConfig``); see :mod:`seo_dist.config.checkpoint`
for its fields, defaults and the ``CheckpointStrategy`` keyword aliases (``max_checkpoints``, ``save_latest``,
``save_best``).
"""

from seo_dist.config.checkpoint import DEFAULT_BEST_METRIC, CheckpointConfig, CheckpointStrategy

__all__ = ["DEFAULT_BEST_METRIC", "CheckpointConfig", "CheckpointStrategy"]
