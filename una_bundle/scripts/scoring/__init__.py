"""From network outputs to answers: anomaly maps, thresholds and masks and their transforms (``anomaly_scoring``),
lesion filling (``lesion_filling``) and brain-masked metrics (``metrics``)."""
