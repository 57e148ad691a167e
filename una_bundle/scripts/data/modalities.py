"""Modality names and what they imply: one definition for training (datalists, lesion encoding) and inference
(intensity normalisation, the healthy output)."""

__all__ = ["INFERENCE_MODALITIES", "LESION_SIGN", "TRAINING_MODALITIES", "T1_MODALITIES", "NON_T1_MODALITIES"]

#: Direction (-1 darker, +1 brighter) of lesions in real scans of each modality (T1w and CT: darker; T2w, FLAIR:
#: brighter). Upper case, as datalists write them.
LESION_SIGN = {"T1": -1, "CT": -1, "T2": 1, "FLAIR": 1}
#: Modalities a training datalist may give its real scans (the lesion sign must be known).
TRAINING_MODALITIES = tuple(sorted(LESION_SIGN))
#: ``modality`` settings of inference: ``auto`` detects CT vs MR; only CT changes the processing (its brain window).
INFERENCE_MODALITIES = ("auto", "ct", "mr", "t1", "t2", "flair", "pd")
#: Inference modalities whose input is a T1w (the lesion-filled input can be the healthy output) ...
T1_MODALITIES = ("t1",)
#: ... and those whose input is not (only the synthesis is a healthy T1w); ``auto`` / ``mr`` decide by correlation.
NON_T1_MODALITIES = ("t2", "flair", "pd", "ct")
