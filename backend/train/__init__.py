"""Training: losses (:mod:`.losses`) and crash-safe checkpoints (:mod:`.checkpoint`)."""
