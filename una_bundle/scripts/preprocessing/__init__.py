"""What a scan goes through before the network: input checks (``input_checks``), its modality, intensity
normalisation and brain mask (``brain``), and the left-right flip registration (``registration``)."""
