"""The pieces :class:`seo_dist.trainer.SEOTrainer` wires together: one optimizer step with the non-finite
loss policy (:mod:`.step`), the stop flag set by SIGTERM/SIGINT (:mod:`.stop`), the trainer state restored
from a checkpoint (:mod:`.restore`) and the final model export (:mod:`.final_export`)."""
