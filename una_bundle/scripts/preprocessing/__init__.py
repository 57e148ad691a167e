"""What a scan goes through before the network: the left-right flip registration (``registration``)."""
