"""The bundle's runs: ``training`` (the ``train.yaml`` workflow) with its ``checkpoints`` and ``tracking`` (MLflow,
QC figures, progress), ``inference`` (scans in, healthy T1w and anomaly maps out) with its ``inference_files``, and
``evaluation`` (metrics on cases with known answers) with its ``evaluation_report``."""
