"""The bundle's runs: ``training`` (the ``train.yaml`` workflow), ``inference`` (scans in, healthy T1w and anomaly
maps out) and ``evaluation`` (metrics on cases with known answers)."""
